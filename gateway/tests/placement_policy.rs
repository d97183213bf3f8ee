//! The placement policy host against real components: the reference CRUSH guest and the
//! misbehaving test guests built by `cartdb-policies`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cartdb_gateway::policy::{
    InvalidPlacement, PlacementPolicy, PolicyEngine, PolicyError, PolicyLimits,
};
use cartdb_policies::{CRUSH_POLICY_WASM, test_guests};

const SEED_MAP: &str = include_str!("../../../shared/crush/seed-map.json");

/// One engine for the whole test binary: each engine reserves its own instance pool.
fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let limits = PolicyLimits {
            call_timeout: Duration::from_millis(50),
            ..PolicyLimits::default()
        };
        PolicyEngine::with_limits(limits).unwrap()
    })
}

fn load(path: &str) -> Result<PlacementPolicy, PolicyError> {
    PlacementPolicy::load(engine(), Path::new(path))
}

fn crush() -> PlacementPolicy {
    load(CRUSH_POLICY_WASM).unwrap()
}

#[test]
fn crush_loads_with_name_and_sha256() {
    let policy = crush();
    assert_eq!(policy.name(), "crush-straw2");
    assert_eq!(policy.sha256().len(), 64);
    assert!(
        policy
            .sha256()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
}

#[test]
fn crush_matches_the_spot_vectors() {
    let mut placer = crush().placer(SEED_MAP, None, &[]).unwrap();
    // user1/pork -> x = 72916709.
    assert_eq!(placer.place(72_916_709, 2).unwrap(), vec![1, 3]);
    assert_eq!(placer.place(72_916_709, 3).unwrap(), vec![1, 3, 6]);
}

#[test]
fn reweights_reach_the_guest() {
    let mut placer = crush().placer(SEED_MAP, Some("data"), &[(3, 0)]).unwrap();
    let placed = placer.place(72_916_709, 3).unwrap();
    assert_eq!(placed.len(), 3);
    assert!(!placed.contains(&3));
    assert_eq!(placed[0], 1, "only inputs on the out device move");
}

#[test]
fn the_guest_refuses_bad_maps_and_rules_with_its_message() {
    let policy = crush();
    match policy.placer(SEED_MAP, Some("nope"), &[]) {
        Err(PolicyError::Guest { message, .. }) => {
            assert!(message.contains("no rule \"nope\""), "{message}")
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
    let straw = SEED_MAP.replacen("\"id\": -10,", "\"id\": -10, \"algorithm\": \"straw\",", 1);
    match policy.placer(&straw, None, &[]) {
        Err(PolicyError::Guest { message, .. }) => {
            assert!(message.contains("only straw2"), "{message}")
        }
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn the_host_refuses_maps_and_reweights_it_cannot_read() {
    let policy = crush();
    assert!(matches!(
        policy.placer("{}", None, &[]),
        Err(PolicyError::InvalidMap { .. })
    ));
    assert!(matches!(
        policy.placer(SEED_MAP, None, &[(u32::MAX, 0)]),
        Err(PolicyError::InvalidReweight {
            device: u32::MAX,
            ..
        })
    ));
}

#[test]
fn too_many_replicas_are_refused_before_calling_the_guest() {
    let mut placer = crush().placer(SEED_MAP, None, &[]).unwrap();
    assert!(matches!(
        placer.place(1, 1_000_000),
        Err(PolicyError::TooManyReplicas { .. })
    ));
    assert!(!placer.is_poisoned());
}

#[test]
fn garbage_bytes_are_a_compile_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.wasm");
    std::fs::write(&path, b"definitely not wasm").unwrap();
    let err = PlacementPolicy::load(engine(), &path).unwrap_err();
    assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.wasm"), "{err}");
}

#[test]
fn missing_and_oversized_files_are_refused() {
    let err = load("/nonexistent/policy.wasm").unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
    let small = PolicyEngine::with_limits(PolicyLimits {
        max_file_bytes: 1000,
        max_instances: 4,
        ..PolicyLimits::default()
    })
    .unwrap();
    let err = PlacementPolicy::load(&small, Path::new(CRUSH_POLICY_WASM)).unwrap_err();
    assert!(
        matches!(err, PolicyError::TooLarge { max: 1000, .. }),
        "{err:?}"
    );
}

#[test]
fn a_policy_that_imports_anything_is_refused_naming_the_import() {
    let err = load(test_guests::IMPORTS_WASM).unwrap_err();
    match &err {
        PolicyError::Imports { imports, .. } => assert_eq!(imports, &["host-log".to_owned()]),
        other => panic!("expected an import error, got {other:?}"),
    }
    assert!(err.to_string().contains("test-imports.wasm"), "{err}");
}

#[test]
fn a_component_of_another_world_is_refused() {
    // A core module is not a component at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    assert!(matches!(
        PlacementPolicy::load(engine(), &path),
        Err(PolicyError::Compile { .. })
    ));
    // An empty component: valid, but exports nothing.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0").unwrap();
    let err = PlacementPolicy::load(engine(), &path).unwrap_err();
    assert!(matches!(err, PolicyError::WrongWorld { .. }), "{err:?}");
}

#[test]
fn a_bad_device_is_an_invalid_result() {
    let mut placer = load(test_guests::BAD_DEVICE_WASM)
        .unwrap()
        .placer(SEED_MAP, None, &[])
        .unwrap();
    match placer.place(1, 3) {
        Err(PolicyError::InvalidResult { problem, .. }) => {
            assert_eq!(problem, InvalidPlacement::UnknownDevice { id: 99 });
        }
        other => panic!("expected an invalid result, got {other:?}"),
    }
    assert!(
        !placer.is_poisoned(),
        "a wrong answer does not corrupt the instance"
    );
}

#[test]
fn a_load_error_is_a_guest_error() {
    let err = load(test_guests::LOAD_ERROR_WASM)
        .unwrap()
        .placer(SEED_MAP, None, &[])
        .unwrap_err();
    match err {
        PolicyError::Guest { message, .. } => assert_eq!(message, "evil says no"),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[test]
fn a_trap_poisons_the_placer() {
    let mut placer = load(test_guests::TRAP_WASM)
        .unwrap()
        .placer(SEED_MAP, None, &[])
        .unwrap();
    let err = placer.place(1, 3).unwrap_err();
    assert!(matches!(err, PolicyError::Trapped { .. }), "{err:?}");
    assert!(placer.is_poisoned());
    assert!(matches!(
        placer.place(1, 3),
        Err(PolicyError::Poisoned { .. })
    ));
}

#[test]
fn an_endless_loop_times_out() {
    let mut placer = load(test_guests::SPIN_WASM)
        .unwrap()
        .placer(SEED_MAP, None, &[])
        .unwrap();
    let start = Instant::now();
    let err = placer.place(1, 3).unwrap_err();
    // Whichever bound comes first: the fuel or the deadline.
    assert!(
        matches!(
            err,
            PolicyError::TimedOut { .. } | PolicyError::OutOfFuel { .. }
        ),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(placer.is_poisoned());
}

/// A spinning guest under each bound alone: fuel (a generous deadline) and time (generous
/// fuel). Fuel is the deterministic one: the same guest stops after the same work on any
/// machine.
#[test]
fn fuel_and_deadline_each_stop_a_spinning_guest() {
    let spin = |limits: PolicyLimits| {
        let engine = PolicyEngine::with_limits(limits).unwrap();
        let policy = PlacementPolicy::load(&engine, Path::new(test_guests::SPIN_WASM)).unwrap();
        let mut placer = policy.placer(SEED_MAP, None, &[]).unwrap();
        placer.place(1, 3).unwrap_err()
    };
    let fuel = spin(PolicyLimits {
        call_fuel: 1_000_000,
        call_timeout: Duration::from_secs(30),
        max_instances: 4,
        ..PolicyLimits::default()
    });
    assert!(
        matches!(
            fuel,
            PolicyError::OutOfFuel {
                fuel: 1_000_000,
                ..
            }
        ),
        "{fuel:?}"
    );
    assert!(fuel.to_string().contains("ran out of fuel"), "{fuel}");
    assert_eq!(fuel.outcome(), "fuel");
    let time = spin(PolicyLimits {
        call_fuel: u64::MAX / 2,
        call_timeout: Duration::from_millis(50),
        max_instances: 4,
        ..PolicyLimits::default()
    });
    assert!(matches!(time, PolicyError::TimedOut { .. }), "{time:?}");
}

/// A guest that grows its memory to 1 GiB traps at the 64 MiB cap; the host is unaffected
/// (its resident memory does not grow by anything like it), and a new placer works.
#[test]
fn a_guest_growing_to_a_gibibyte_traps_at_the_cap() {
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    let before = rss();
    let policy = load(test_guests::GROW_WASM).unwrap();
    let mut placer = policy.placer(SEED_MAP, None, &[]).unwrap();
    let err = placer.place(1, 3).unwrap_err();
    assert!(matches!(err, PolicyError::Trapped { .. }), "{err:?}");
    assert!(err.to_string().contains("trapped"), "{err}");
    assert!(placer.is_poisoned());
    assert!(
        rss().saturating_sub(before) < 256 << 20,
        "the host grew by {} MiB",
        rss().saturating_sub(before) >> 20
    );
    let mut fresh = policy.placer(SEED_MAP, None, &[]).unwrap();
    assert!(
        fresh.place(1, 3).is_err(),
        "the guest grows again on every call"
    );
}

/// A guest answering the same device twice is refused, naming the device.
#[test]
fn a_duplicate_device_is_refused() {
    let mut placer = load(test_guests::DUP_DEVICE_WASM)
        .unwrap()
        .placer(SEED_MAP, None, &[])
        .unwrap();
    let err = placer.place(1, 3).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidResult { .. }), "{err:?}");
    assert_eq!(err.outcome(), "invalid");
}

#[test]
fn placers_are_independent_and_reusable() {
    let policy = crush();
    let mut a = policy.placer(SEED_MAP, None, &[]).unwrap();
    let mut b = policy.placer(SEED_MAP, None, &[(1, 0)]).unwrap();
    for x in 0..200 {
        let pa = a.place(x, 3).unwrap();
        let pb = b.place(x, 3).unwrap();
        assert_eq!(pa.len(), 3);
        assert!(!pb.contains(&1));
    }
}

/// Latency of one guest placement (run: `cargo test --release -p cartdb-gateway --test
/// placement_policy -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn place_latency() {
    let mut placer = crush().placer(SEED_MAP, None, &[]).unwrap();
    // PLACE_BENCH_CALLS lowers the count for instruction counting under valgrind.
    let calls: u32 = std::env::var("PLACE_BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let start = Instant::now();
    for x in 0..calls {
        std::hint::black_box(placer.place(x, 3).unwrap());
    }
    println!(
        "place(x, 3) on the seed map: {:?} per call",
        start.elapsed() / calls
    );
}

/// The second placement policy, rendezvous hashing, through the host like CRUSH: it loads
/// the same map, places every PG of a 256-PG pool on three distinct devices of distinct
/// hosts, the same way twice, honours an out device, and moves only what a change needs.
#[test]
fn the_rendezvous_policy_places_like_a_policy_should() {
    let policy = load(cartdb_policies::RENDEZVOUS_POLICY_WASM).unwrap();
    assert_eq!(policy.name(), "rendezvous-hrw");
    assert_ne!(policy.sha256(), crush().sha256());
    let pool = cartdb_core::pg::Pool::new(1, 256).unwrap();
    let mut placer = policy.placer(SEED_MAP, None, &[]).unwrap();
    let mut again = policy.placer(SEED_MAP, None, &[]).unwrap();
    let mut out = policy.placer(SEED_MAP, None, &[(2, 0)]).unwrap();
    let mut moved = 0;
    for pg in 0..256 {
        let pps = pool.pps(pg);
        let up = placer.place(pps, 3).unwrap();
        assert_eq!(up.len(), 3, "pg {pg}: {up:?}");
        let mut distinct = up.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "pg {pg}: {up:?}");
        assert_eq!(again.place(pps, 3).unwrap(), up);
        let without = out.place(pps, 3).unwrap();
        assert!(!without.contains(&2));
        if without != up {
            moved += 1;
            assert!(
                up.contains(&2),
                "pg {pg} moved without device 2: {up:?} -> {without:?}"
            );
        }
    }
    // Device 2 is in about half of the PGs (3 of 6); only those move.
    assert!((80..=176).contains(&moved), "{moved} PGs moved");
}

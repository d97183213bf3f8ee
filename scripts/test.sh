#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Everything CI checks, in order, with a header per step and a summary at the end:
#
#   1. dependencies         scripts/install-deps.sh --for-tests (adds Chromium, ChromeDriver and
#                           Schemathesis in target/tools/schemathesis)
#   2. format               cargo fmt --all --check
#   3. build                cargo build --workspace --all-targets (makes target/debug/cartdb-*,
#                           which the cluster tests run as processes, and target/policies/*.wasm)
#   4. lint                 cargo clippy --workspace --all-targets -- -D warnings
#   5. unit and crate tests cargo test --workspace --lib --bins --test <each crate's tests/*.rs>
#                           --no-fail-fast (every crate but cartdb-tests' cluster tests)
#   6. cluster tests        cargo test --workspace --test <each tests/tests/*.rs>
#                           --no-fail-fast -- --test-threads=2 (cartdb-tests' targets)
#   7. policy conformance   cartdb policy verify against every ../shared/crush/*-vectors.csv
#                           (per placement key) and *-pg-vectors.csv (per placement group)
#   8. compose cluster      scripts/compose-test.sh: the release build, the images, and
#                           compose.yaml brought up, faulted and checked in Docker
#
# The cluster tests run at most two clusters at a time: each is a ZooKeeper JVM plus nine
# cartdb processes, and CI has 2 cores. Two overlap one cluster's start-up with another's
# test, about halving the wall time of one at a time, while more would make the processes
# compete for CPU long enough to risk 2-second ZooKeeper sessions expiring by accident.
#
# A failed step does not hide the later ones (except a failed build, after which nothing
# can run); the script exits non-zero if any step failed.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$CARTDB_REPO"

TARGET_DIR="${CARGO_TARGET_DIR:-$CARTDB_REPO/target}"
SHARED="$CARTDB_REPO/../shared"
if [[ ${CI:-} == true ]]; then
    # A fresh clone builds everything once: incremental artefacts only cost time and disk.
    export CARGO_INCREMENTAL=0
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARTDB_BIN_DIR="$TARGET_DIR/debug"
# Installed by scripts/install-deps.sh --for-tests; tests/tests/contract.rs runs it.
export CARTDB_SCHEMATHESIS="$TARGET_DIR/tools/schemathesis/bin/schemathesis"

results=()
failed=0
# step NAME COMMAND...: runs one step under a header and records PASS/FAIL with its duration.
step() {
    local name=$1 started=$SECONDS status=0
    shift
    section "$name"
    "$@" || status=$?
    if ((status == 0)); then
        results+=("PASS  $name ($((SECONDS - started))s)")
    else
        results+=("FAIL  $name ($((SECONDS - started))s, exit $status)")
        failed=1
    fi
    return "$status"
}

summary() {
    section "summary"
    printf '  %s\n' "${results[@]}" >&2
    if ((failed)); then
        printf '\n%s\n' "FAILED" >&2
        exit 1
    fi
    printf '\n%s\n' "all steps passed" >&2
}

# verify_policies: runs `cartdb policy verify` for every <name>-vectors.csv and
# <name>-pg-vectors.csv in shared/crush with its <name>-map.json, printing the closing lines;
# fails on any failed vector.
verify_policies() {
    local crush="$SHARED/crush" vectors map name out status any=0 bad=0
    if [[ ! -d $crush ]]; then
        warn "$crush not found: the conformance vectors live in shared/crush beside the repository"
        warn "(clone or copy the project's shared/ folder next to this repository, at $SHARED)"
        return 1
    fi
    for vectors in "$crush"/*-vectors.csv; do
        [[ -f $vectors ]] || continue
        any=1
        name=$(basename "$vectors" -vectors.csv)
        name=${name%-pg}
        map="$crush/$name-map.json"
        if [[ ! -f $map ]]; then
            warn "$map not found for $vectors"
            bad=1
            continue
        fi
        info "$name: cartdb policy verify --policy target/policies/crush.wasm --map $map --vectors $vectors"
        status=0
        out=$("$TARGET_DIR/debug/cartdb" policy verify --policy "$TARGET_DIR/policies/crush.wasm" \
            --map "$map" --vectors "$vectors" 2>&1) || status=$?
        if ((status != 0)) || ! grep -Eq '^[0-9]+ passed, 0 failed' <<<"$out"; then
            printf '%s\n' "$out" | tail -n 40
            warn "$name: conformance failed (exit $status)"
            bad=1
        else
            printf '%s\n' "$out" | tail -n 5
        fi
    done
    ((any)) || { warn "no *-vectors.csv in $crush"; return 1; }
    return "$bad"
}

disk_free() { df -h "$TARGET_DIR" 2>/dev/null | tail -n 1 || true; }
mkdir -p "$TARGET_DIR"
info "disk before the build: $(disk_free)"
step "dependencies (scripts/install-deps.sh --for-tests)" \
    "$CARTDB_REPO/scripts/install-deps.sh" --for-tests || summary
step "format (cargo fmt --all --check)" cargo fmt --all --check || true
if ! step "build (cargo build --workspace --all-targets)" cargo build --workspace --all-targets; then
    summary
fi
step "lint (cargo clippy --workspace --all-targets -- -D warnings)" \
    cargo clippy --workspace --all-targets -- -D warnings || true
# The crates' own tests, selected as targets of the whole workspace (`--lib --bins` and each
# crate's tests/*.rs) rather than with `--exclude cartdb-tests`: as for the cluster tests
# below, a narrower selection resolves dependency features differently and rebuilds tokio,
# hyper and everything above them (measured: 424 crates, 3 minutes). No crate has doc tests.
crate_tests=()
for file in "$CARTDB_REPO"/*/tests/*.rs "$CARTDB_REPO"/policies/*/tests/*.rs; do
    [[ -f $file && $file != "$CARTDB_REPO"/tests/tests/* ]] || continue
    crate_tests+=(--test "$(basename "$file" .rs)")
done
step "unit and crate tests (cargo test --workspace --lib --bins --test <each crate's tests/*.rs>)" \
    cargo test --workspace --no-fail-fast --lib --bins "${crate_tests[@]}" || true
# The cluster tests are selected as test targets of the whole workspace rather than with
# `-p cartdb-tests`: cargo resolves dependency features per selection, and a narrower one
# would compile tokio, hyper and the rest a second time (minutes, and gigabytes of disk).
cluster_tests=()
for file in "$CARTDB_REPO"/tests/tests/*.rs; do
    cluster_tests+=(--test "$(basename "$file" .rs)")
done
step "cluster tests (cargo test --workspace --test <each tests/tests/*.rs> -- --test-threads=2)" \
    cargo test --workspace --no-fail-fast "${cluster_tests[@]}" -- --test-threads=2 || true
step "policy conformance (cartdb policy verify)" verify_policies || true
info "disk after the cargo steps: $(disk_free)"
step "compose cluster (scripts/compose-test.sh)" "$CARTDB_REPO/scripts/compose-test.sh" || true
summary

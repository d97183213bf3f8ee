#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs what building, testing and running cartdb need on a fresh Debian/Ubuntu machine,
# and only what is missing (running it again changes nothing):
#
#   - a C linker (gcc) for Rust, Java (default-jre-headless) if `java` is missing,
#     Apache ZooKeeper (Debian's `zookeeper` package) and netcat (`nc`, for `ruok` probes);
#   - the Rust target wasm32-unknown-unknown (placement policies are WebAssembly guests)
#     and the rustfmt and clippy components;
#   - with --for-tests, also what only the tests need: Chromium and ChromeDriver (Debian's
#     chromium and chromium-driver) for the dashboard's browser test, and Schemathesis (PyPI,
#     pinned) in a virtualenv under target/tools/schemathesis for the API contract test.
#
# Works without a terminal (DEBIAN_FRONTEND=noninteractive); uses sudo only when not root.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

for_tests=0
case "${1:-}" in
    "") ;;
    --for-tests) for_tests=1 ;;
    *) die "unknown option '$1' (usage: scripts/install-deps.sh [--for-tests])" ;;
esac

missing_packages=()
need_package() { missing_packages+=("$1"); }

info "checking system packages"
command -v cc >/dev/null 2>&1 || need_package gcc
command -v java >/dev/null 2>&1 || need_package default-jre-headless
[[ -f /usr/share/java/zookeeper.jar ]] || need_package zookeeper
[[ -f /usr/share/java/slf4j-simple.jar ]] || need_package libslf4j-java
command -v nc >/dev/null 2>&1 || need_package netcat-openbsd
if ((for_tests)); then
    [[ -x /usr/bin/chromium ]] || need_package chromium
    [[ -x /usr/bin/chromedriver ]] || need_package chromium-driver
fi

if ((${#missing_packages[@]})); then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing_packages[*]} and apt-get is not available: install them by hand"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing_packages[*]}: run as root or install sudo"
        sudo=(sudo)
    fi
    info "installing ${missing_packages[*]} (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing_packages[@]}"
    ok "installed ${missing_packages[*]}"
else
    ok "system packages present (cc, java, zookeeper, slf4j, nc$( ((for_tests)) && echo ', chromium, chromedriver'))"
fi

info "checking the Rust toolchain"
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs), version 1.95"
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        info "adding the Rust target wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
    for component in rustfmt clippy; do
        if ! rustup component list --installed | grep -q "^${component}"; then
            info "adding the Rust component $component"
            rustup component add "$component"
        fi
    done
    ok "Rust $(rustc --version | cut -d' ' -f2) with wasm32-unknown-unknown, rustfmt and clippy"
else
    sysroot=$(rustc --print sysroot)
    [[ -d $sysroot/lib/rustlib/wasm32-unknown-unknown ]] ||
        die "no rustup and no wasm32-unknown-unknown standard library in $sysroot: install Rust with rustup"
    ok "Rust $(rustc --version | cut -d' ' -f2) (without rustup) with wasm32-unknown-unknown"
fi

# Schemathesis for tests/tests/contract.rs: pinned, in a virtualenv of its own so nothing of
# the system's Python changes.
SCHEMATHESIS_VERSION=4.32.5
if ((for_tests)); then
    venv="${CARGO_TARGET_DIR:-$CARTDB_REPO/target}/tools/schemathesis"
    if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *"$SCHEMATHESIS_VERSION"* ]]; then
        command -v python3 >/dev/null 2>&1 || die "python3 is missing: install Debian's python3 and python3-venv"
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
            command -v apt-get >/dev/null 2>&1 || die "python3's venv module is missing: install python3-venv"
            sudo=()
            ((EUID == 0)) || sudo=(sudo)
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
        fi
        info "installing schemathesis $SCHEMATHESIS_VERSION into $venv (PyPI)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    ok "schemathesis $SCHEMATHESIS_VERSION in $venv"
fi

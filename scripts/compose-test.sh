#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The compose cluster test (run by scripts/test.sh, so by CI): brings compose.yaml up in a
# project of its own, runs scripts/lib/compose_test.py against it, and tears it down.
#
#   1. Docker, dockerd, scripts/install-deps.sh and the base image as in compose-up.sh;
#      cargo build --release (a no-op when already built), staging, image builds (Docker's
#      layer cache is kept)
#   2. up -d in project "cartdb-test" with an admin token, a cluster secret and the
#      monitoring profile (Prometheus, docker/compose-monitoring.yaml); waits until every
#      container is healthy and the API sees 6 devices up and 2 gateways
#   3. the test: a cart scenario (inserts, deletes, list_all, list_category); Prometheus
#      scrapes all 9 cartdb processes and counts the scenario's inserts; docker kill a
#      data node and keep writing; docker network disconnect a gateway and keep serving
#      through the other; reconnect the gateway (with its address: docker/compose-test.yaml
#      gives the network a subnet so that `connect --ip` works) and start the data node;
#      check that every acknowledged operation is present and that the replicas agree
#   4. down -v: containers, network and volumes go, even when the test fails (images and
#      the base image stay, as cache for the next run). On failure every service's log is
#      saved first, under target/compose-test/.
#
# Exits non-zero when anything fails. Environment: CARTDB_API_PORT (the host port of the
# test's API; default 8080, or a free port when 8080 is taken and the variable is unset),
# CARTDB_TEST_PROJECT (cartdb-test), CARTDB_COMPOSE, CARTDB_START_TIMEOUT (seconds, 180),
# CARTDB_KEEP_CLUSTER=1 (leave the cluster running afterwards, for debugging),
# CARTDB_TEST_REJOIN (new-address, the default: the disconnected gateway comes back with
# another address, as a moved host; same-address: with its own, as after a healed partition),
# CARTDB_TEST_SUBNET (the test network's subnet; default: a free /24 in 172.28-30.200-255.0),
# CARTDB_TEST_WRITES_AFTER_HEAL (writes made right after both are back, before the checks: 12).
# The defaults are the harder cases; each once exposed a fault, see docs/compose.md.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker.sh"

case ${1:-} in
-h | --help)
    print_usage "${BASH_SOURCE[0]}"
    exit 0
    ;;
"") ;;
*) die "unknown option $1 (try --help)" ;;
esac

export COMPOSE_PROJECT_NAME="${CARTDB_TEST_PROJECT:-cartdb-test}"
# The test's own settings: nothing from the caller's shell may change what is tested.
CARTDB_ADMIN_TOKEN="compose-test-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
export CARTDB_ADMIN_TOKEN
CARTDB_CLUSTER_SECRET="compose-test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export CARTDB_CLUSTER_SECRET
export CARTDB_REPLICAS=3 CARTDB_WRITE_QUORUM=2 CARTDB_READ_QUORUM=2 CARTDB_API_BIND=127.0.0.1
START_TIMEOUT="${CARTDB_START_TIMEOUT:-180}"
# The network's subnet is chosen just before `up`; until then compose still needs a value
# to read docker/compose-test.yaml (build and down do not use it).
subnet_wanted="${CARTDB_TEST_SUBNET:-}"
export CARTDB_TEST_SUBNET="${subnet_wanted:-192.0.2.0/24}"
LOG_DIR="${CARGO_TARGET_DIR:-$CARTDB_REPO/target}/compose-test"
begun=$SECONDS

# free_subnet: a /24 for the test's network that overlaps no Docker network and no route of
# this host (docker/compose-test.yaml gives it to the network, so a gateway can be
# reconnected with its own address).
free_subnet() {
    local taken
    taken=$({
        # shellcheck disable=SC2046 # one argument per network id
        docker network inspect --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}' $(docker network ls -q)
        ip -4 route 2>/dev/null | awk '{print $1}'
    } | tr ' ' '\n')
    python3 - "$taken" <<'PY'
import ipaddress, sys
taken = [ipaddress.ip_network(n, strict=False) for n in sys.argv[1].split()
         if n[:1].isdigit() and ":" not in n]
for third in range(200, 256):
    for second in (30, 29, 28):
        candidate = ipaddress.ip_network(f"172.{second}.{third}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            print(candidate)
            sys.exit(0)
sys.exit("no free /24 in 172.28-30.200-255.0")
PY
}

# A free port on 127.0.0.1 (the kernel's choice), for when 8080 is taken.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

section "compose test: Docker"
docker_install_missing
"$CARTDB_REPO/scripts/install-deps.sh"
docker_ensure_daemon
docker_ensure_base_image
compose_init "$CARTDB_REPO/docker/compose-test.yaml" "$CARTDB_REPO/docker/compose-monitoring.yaml"

up=0
teardown() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if ((up)); then
        if ((status != 0)); then
            mkdir -p "$LOG_DIR"
            "${COMPOSE[@]}" ps >"$LOG_DIR/ps.txt" 2>&1
            "${COMPOSE[@]}" logs --no-color --timestamps >"$LOG_DIR/logs.txt" 2>&1
            warn "the test failed: container states and every service's log are in $LOG_DIR/"
        fi
        if [[ ${CARTDB_KEEP_CLUSTER:-0} == 1 ]]; then
            warn "CARTDB_KEEP_CLUSTER=1: leaving project $COMPOSE_PROJECT_NAME running (remove it with: ${COMPOSE[*]} down -v)"
        else
            section "compose test: teardown (down -v)"
            local started=$SECONDS
            "${COMPOSE[@]}" down -v --remove-orphans --timeout 10 2>&1 | tail -n 3
            ok "containers, network and volumes of $COMPOSE_PROJECT_NAME removed in $((SECONDS - started))s"
        fi
    fi
    docker_stop_started_daemon
    info "compose test took $((SECONDS - begun))s in all"
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

section "compose test: images"
cartdb_build_images

section "compose test: up (project $COMPOSE_PROJECT_NAME)"
# Leftovers of an interrupted run would hold the port and stale volumes.
"${COMPOSE[@]}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
if [[ -z ${CARTDB_API_PORT:-} ]]; then
    CARTDB_API_PORT=8080
    if port_in_use 8080; then
        CARTDB_API_PORT=$(free_port)
        warn "port 8080 is taken (a local cluster?): the test's API uses port $CARTDB_API_PORT"
    fi
fi
export CARTDB_API_PORT
# The monitoring profile runs too, on a port of the kernel's choice.
CARTDB_PROMETHEUS_PORT=$(free_port)
export CARTDB_PROMETHEUS_PORT CARTDB_PROMETHEUS_BIND=127.0.0.1
if [[ -z $subnet_wanted ]]; then
    CARTDB_TEST_SUBNET=$(free_subnet) || die "no free subnet for the test's network"
fi
info "the test's network: $CARTDB_TEST_SUBNET, its API: 127.0.0.1:$CARTDB_API_PORT"
API_URL="http://127.0.0.1:$CARTDB_API_PORT"
up=1
started=$SECONDS
"${COMPOSE[@]}" up -d --remove-orphans || die "compose up failed"
if ! compose_wait_ready "$START_TIMEOUT" "$API_URL"; then
    compose_report_unhealthy
    die "the cluster was not ready within ${START_TIMEOUT}s"
fi
ok "cluster ready $((SECONDS - started))s after up"

section "compose test: scenario, faults and checks"
started=$SECONDS
python3 "$CARTDB_REPO/scripts/lib/compose_test.py" --api "$API_URL" \
    --token "$CARTDB_ADMIN_TOKEN" --replicas "$CARTDB_REPLICAS" \
    --prometheus "http://127.0.0.1:$CARTDB_PROMETHEUS_PORT" \
    --rejoin "${CARTDB_TEST_REJOIN:-new-address}" \
    --writes-after-heal "${CARTDB_TEST_WRITES_AFTER_HEAL:-12}" -- "${COMPOSE[@]}"
ok "compose test passed in $((SECONDS - started))s"

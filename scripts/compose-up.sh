#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Takes a machine from nothing to a running compose cluster (compose.yaml: a 3-node
# ZooKeeper ensemble, 6 data nodes, 2 gateways and the API server), printing each step:
#
#   1. installs docker.io and docker-compose if they are missing (apt-get), and what the
#      host build needs (scripts/install-deps.sh: a linker, the wasm32 Rust target, ...)
#   2. starts dockerd in the background if none answers
#   3. makes the base image debian:bookworm-slim if it is absent (docker pull, or
#      debootstrap + docker import where no registry is reachable)
#   4. builds the images: cargo build --release on the host (a no-op when already built),
#      stripped binaries + policies staged into docker/cartdb/dist/, then compose build
#   5. docker compose up -d (or docker-compose up -d)
#   6. waits until every container is healthy and the API sees 6 devices up and 2 gateways
#   7. prints the API URL
#
# Running it again is safe: what exists is kept, and `up -d` only recreates containers whose
# image or configuration changed. Data lives in named volumes until compose-down.sh -v.
#
# Options: --build-only (steps 1-4), --no-build (skip step 4: use the images as they are),
#   --no-deps (skip step 1), --monitoring (also Prometheus, scraping every cartdb process:
#   docker/compose-monitoring.yaml, UI on 127.0.0.1:9090), --help
# Environment: CARTDB_API_PORT (8080), CARTDB_API_BIND (127.0.0.1), CARTDB_ADMIN_TOKEN,
#   CARTDB_REPLICAS/CARTDB_WRITE_QUORUM/CARTDB_READ_QUORUM (3/2/2), COMPOSE_PROJECT_NAME,
#   CARTDB_COMPOSE ("docker compose" or "docker-compose"), CARTDB_START_TIMEOUT (seconds, 180),
#   CARTDB_PROMETHEUS_PORT (9090) and CARTDB_PROMETHEUS_BIND (127.0.0.1) with --monitoring.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker.sh"

build=1 deps=1 start=1 monitoring=0
for arg in "$@"; do
    case $arg in
    --build-only) start=0 ;;
    --monitoring) monitoring=1 ;;
    --no-build) build=0 ;;
    --no-deps) deps=0 ;;
    -h | --help)
        print_usage "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

API_PORT="${CARTDB_API_PORT:-8080}"
API_BIND="${CARTDB_API_BIND:-127.0.0.1}"
START_TIMEOUT="${CARTDB_START_TIMEOUT:-180}"
[[ $API_BIND == 0.0.0.0 ]] && api_host=127.0.0.1 || api_host=$API_BIND
API_URL="http://$api_host:$API_PORT"
begun=$SECONDS

if ((deps)); then
    section "1/7 Docker and compose (and what building cartdb needs: scripts/install-deps.sh)"
    docker_install_missing
    "$CARTDB_REPO/scripts/install-deps.sh"
fi
section "2/7 dockerd"
docker_ensure_daemon
section "3/7 base image"
docker_ensure_base_image
if ((monitoring)); then
    compose_init "$CARTDB_REPO/docker/compose-monitoring.yaml"
else
    # shellcheck disable=SC2119 # no extra compose files
    compose_init
fi
if ((build)); then
    section "4/7 images"
    cartdb_build_images
fi
((start)) || {
    ok "images ready in $((SECONDS - begun))s; start them with: ${COMPOSE[*]} up -d"
    exit 0
}

# The admin token: the API server refuses to start without one. Generated once (readable by
# this user only) unless CARTDB_ADMIN_TOKEN is set.
if [[ -z ${CARTDB_ADMIN_TOKEN:-} ]]; then
    token_file="$CARTDB_REPO/.cartdb/compose-admin-token"
    ensure_secret_file "$token_file" 24 "an admin token"
    CARTDB_ADMIN_TOKEN=$(<"$token_file")
fi
export CARTDB_ADMIN_TOKEN
# The cluster secret every cartdb process proves to its RPC peers, likewise generated once.
if [[ -z ${CARTDB_CLUSTER_SECRET:-} ]]; then
    secret_file="$CARTDB_REPO/.cartdb/compose-cluster-secret"
    ensure_secret_file "$secret_file" 32 "a cluster secret"
    CARTDB_CLUSTER_SECRET=$(<"$secret_file")
fi
export CARTDB_CLUSTER_SECRET

section "5/7 ${COMPOSE[*]} up -d"
started=$SECONDS
"${COMPOSE[@]}" up -d --remove-orphans || die "compose up failed (see ${COMPOSE[*]} logs)"

section "6/7 waiting for the cluster (up to ${START_TIMEOUT}s)"
if ! compose_wait_ready "$START_TIMEOUT" "$API_URL"; then
    compose_report_unhealthy
    die "the cluster was not ready within ${START_TIMEOUT}s"
fi
ok "cluster ready $((SECONDS - started))s after up ($((SECONDS - begun))s in all)"

section "7/7 ready"
token_hint=" -H 'Authorization: Bearer \$CARTDB_ADMIN_TOKEN'"
cat <<EOF_READY

  cartdb runs in compose project "$(compose_project)". REST API: $API_URL

    curl -s -X POST $API_URL/api/insert -H 'Content-Type: application/json' \\
         -d '{"userid": "alice", "item_name": "pork"}'
    curl -s '$API_URL/api/list_all?userid=alice'
    curl -s$token_hint '$API_URL/api/list_category?category=1'
    curl -s$token_hint $API_URL/api/cluster
    ${COMPOSE[*]} exec api cartdb status

  The admin token: export CARTDB_ADMIN_TOKEN=\$(cat ${token_file:-<your CARTDB_ADMIN_TOKEN>})

  Logs: ${COMPOSE[*]} logs -f [service]      Stop: scripts/compose-down.sh [-v]
EOF_READY
if ((monitoring)); then
    cat <<EOF_MONITORING
  Prometheus (scraping every cartdb process every 5 s): http://${CARTDB_PROMETHEUS_BIND:-127.0.0.1}:${CARTDB_PROMETHEUS_PORT:-9090}
EOF_MONITORING
fi
echo

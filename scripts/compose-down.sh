#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the compose cluster that compose-up.sh (or `docker compose up`) started: removes its
# containers and network. The data volumes (ZooKeeper's and the data nodes') are kept, so the
# next compose-up.sh finds the carts again, unless -v is given. Images are always kept.
#
# Options: -v, --volumes (also delete the data volumes), --help
# Environment: COMPOSE_PROJECT_NAME, CARTDB_COMPOSE (as for compose-up.sh)
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker.sh"

volumes=()
for arg in "$@"; do
    case $arg in
    -v | --volumes) volumes=(-v) ;;
    -h | --help)
        print_usage "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

command -v docker >/dev/null 2>&1 || die "docker is not installed: there is no compose cluster to stop"
docker_answers || die "dockerd is not running: there is no compose cluster to stop"
# With the monitoring file, so that Prometheus (compose-up.sh --monitoring) and its volume go
# too; without that profile running it changes nothing.
compose_init "$CARTDB_REPO/docker/compose-monitoring.yaml"
info "${COMPOSE[*]} down ${volumes[*]}"
"${COMPOSE[@]}" down --remove-orphans "${volumes[@]}"
if ((${#volumes[@]})); then
    ok "cluster stopped; containers, network and data volumes removed"
else
    ok "cluster stopped; data volumes kept (delete them with: scripts/compose-down.sh -v)"
fi

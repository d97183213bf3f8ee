#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts a complete local cartdb cluster in the foreground and stops it on Ctrl-C:
#
#   ZooKeeper 127.0.0.1:2181 -> 6 data nodes 127.0.0.1:7001-7006 -> 2 gateways 127.0.0.1:7101-7102
#   -> the REST API on 127.0.0.1:8080
#
# Every process is separate; all data and logs live under one directory, ./.cartdb/ by
# default (data survives a restart; use --clean to start empty). The script installs missing
# dependencies, builds the release binaries, starts everything, waits until the API reports
# all 6 devices up and both gateways, prints where the API is, and then waits. Ctrl-C (or
# SIGTERM) stops the API, the gateways, the data nodes and then ZooKeeper, and exits 0. If a
# process dies during start-up, the tail of its log is printed and the script exits non-zero.
#
# Options: --clean (delete the cluster directory first), --no-build, --no-deps, --help
# Environment: CARTDB_HOME (cluster directory), CARTDB_ZK_PORT (2181), CARTDB_API_PORT (8080),
#   CARTDB_START_TIMEOUT (seconds, 120), CARTDB_PROFILE (release, or debug for a quicker
#   build), CARTDB_ADMIN_TOKEN (the API server's admin token; by default one is generated
#   once and kept in <cluster directory>/admin-token), RUST_LOG (default info).
# The cluster secret every process proves in its RPC hello is generated once and kept in
# <cluster directory>/cluster-secret.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/zookeeper.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/zookeeper.sh"

clean=0 build=1 deps=1
for arg in "$@"; do
    case $arg in
    --clean) clean=1 ;;
    --no-build) build=0 ;;
    --no-deps) deps=0 ;;
    -h | --help)
        print_usage "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

DATANODES=6
GATEWAYS=2
ZK_PORT="${CARTDB_ZK_PORT:-2181}"
API_PORT="${CARTDB_API_PORT:-8080}"
START_TIMEOUT="${CARTDB_START_TIMEOUT:-120}"
CLUSTER_HOME="${CARTDB_HOME:-$CARTDB_REPO/.cartdb}"
TARGET_DIR="${CARGO_TARGET_DIR:-$CARTDB_REPO/target}"
PROFILE="${CARTDB_PROFILE:-release}"
case $PROFILE in
release) build_cmd=(cargo build --release --workspace) ;;
debug) build_cmd=(cargo build --workspace) ;;
*) die "CARTDB_PROFILE must be release or debug, not $PROFILE" ;;
esac
BIN="$TARGET_DIR/$PROFILE"
POLICY="$TARGET_DIR/policies/crush.wasm"
MERGE_POLICY="$TARGET_DIR/policies/merge.wasm"
MAP="$CARTDB_REPO/config/crush-map.json"
CATALOG="$CARTDB_REPO/config/catalog.json"
API_URL="http://127.0.0.1:$API_PORT"
export RUST_LOG="${RUST_LOG:-info}"

datanode_port() { echo $((7000 + $1)); }
gateway_port() { echo $((7100 + $1)); }

if ((deps)); then
    section "dependencies"
    "$CARTDB_REPO/scripts/install-deps.sh"
fi
if ((build)); then
    section "${build_cmd[*]}"
    (cd "$CARTDB_REPO" && "${build_cmd[@]}")
fi
for file in "$BIN/cartdb-datanode" "$BIN/cartdb-gateway" "$BIN/cartdb-api" "$POLICY" "$MAP" "$CATALOG"; do
    [[ -f $file ]] || die "$file not found (build with: ${build_cmd[*]})"
done

section "starting the cluster"
ports=("$ZK_PORT" "$API_PORT")
for i in $(seq "$DATANODES"); do ports+=("$(datanode_port "$i")"); done
for i in $(seq "$GATEWAYS"); do ports+=("$(gateway_port "$i")"); done
for port in "${ports[@]}"; do
    port_in_use "$port" && die "port $port on 127.0.0.1 is already in use (is a cluster already running?)"
done
if ((clean)); then
    info "deleting $CLUSTER_HOME (--clean)"
    rm -rf "$CLUSTER_HOME"
fi
mkdir -p "$CLUSTER_HOME/logs"
CLUSTER_HOME=$(cd "$CLUSTER_HOME" && pwd)
LOGS="$CLUSTER_HOME/logs"

# The admin token: the API server refuses to start without one. Generated once per cluster
# directory (readable by this user only) unless CARTDB_ADMIN_TOKEN is set.
TOKEN_FILE="$CLUSTER_HOME/admin-token"
if [[ -z ${CARTDB_ADMIN_TOKEN:-} ]]; then
    ensure_secret_file "$TOKEN_FILE" 24 "an admin token"
    CARTDB_ADMIN_TOKEN=$(<"$TOKEN_FILE")
fi
export CARTDB_ADMIN_TOKEN
# The cluster secret every process proves to its RPC peers (a peer without it is refused):
# generated once per cluster directory, readable by this user only, passed as a file.
SECRET_FILE="$CLUSTER_HOME/cluster-secret"
ensure_secret_file "$SECRET_FILE" 32 "a cluster secret"
export CARTDB_CLUSTER_SECRET_FILE="$SECRET_FILE"

# The processes this script started: pid -> name and pid -> log, and the stop order.
declare -A NAME_OF=() LOG_OF=()
API_PIDS=() GATEWAY_PIDS=() DATANODE_PIDS=()
stopped=0

# Children run in their own session (setsid) so that Ctrl-C reaches only this script, which
# then stops them in order. With `&` and no job control the child is not a group leader, so
# setsid execs in place and $! is the process itself.
launch() {
    local name=$1 log="$LOGS/$1.log"
    shift
    printf '=== %s: starting %s\n' "$(date -Is)" "$*" >>"$log"
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$log" 2>&1 </dev/null &
    else
        "$@" >>"$log" 2>&1 </dev/null &
    fi
    LAUNCHED=$!
    NAME_OF[$LAUNCHED]=$name
    LOG_OF[$LAUNCHED]=$log
    info "started $name (pid $LAUNCHED)"
}

is_running() { kill -0 "$1" 2>/dev/null; }

# shellcheck disable=SC2317 # called from the traps below
# stop_group NAME PID...: SIGTERM, then wait up to 15 s, then SIGKILL.
stop_group() {
    local label=$1 pid
    shift
    (($#)) || return 0
    info "stopping $label"
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        if ! poll_until 15 "${NAME_OF[$pid]:-$pid} to exit" _pid_gone "$pid"; then
            warn "${NAME_OF[$pid]:-$pid} ignored SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# shellcheck disable=SC2317 # called from the traps below
stop_all() {
    ((stopped)) && return 0
    stopped=1
    # Stopping must finish even if our output is gone (e.g. `| tee` died with the Ctrl-C):
    # no SIGPIPE, no exit on a failed message.
    trap '' PIPE
    set +e
    stop_group "the API server" "${API_PIDS[@]}"
    stop_group "the gateways" "${GATEWAY_PIDS[@]}"
    stop_group "the data nodes" "${DATANODE_PIDS[@]}"
    info "stopping ZooKeeper"
    zk_stop "$CLUSTER_HOME/zookeeper"
    ok "cluster stopped; data and logs kept in $CLUSTER_HOME"
}

# shellcheck disable=SC2317 # called from the traps below
on_signal() {
    trap '' PIPE
    printf '\n' >&2 || true
    stop_all
    exit 0
}
trap on_signal INT TERM HUP
trap stop_all EXIT

zk_start "$CLUSTER_HOME/zookeeper" "$ZK_PORT"
NAME_OF[$ZK_PID]=zookeeper
LOG_OF[$ZK_PID]="$CLUSTER_HOME/zookeeper/zookeeper.log"
ZK="127.0.0.1:$ZK_PORT"

for i in $(seq "$DATANODES"); do
    mkdir -p "$CLUSTER_HOME/datanode-$i"
    launch "datanode-$i" "$BIN/cartdb-datanode" --device-id "$i" \
        --listen "127.0.0.1:$(datanode_port "$i")" --data-dir "$CLUSTER_HOME/datanode-$i" --zk "$ZK"
    DATANODE_PIDS+=("$LAUNCHED")
done
for i in $(seq "$GATEWAYS"); do
    launch "gateway-$i" "$BIN/cartdb-gateway" --listen "127.0.0.1:$(gateway_port "$i")" --zk "$ZK" \
        --placement-policy "$POLICY" --merge-policy "$MERGE_POLICY" \
        --map-file "$MAP" --catalog-file "$CATALOG" --replicas 3 --write-quorum 2 --read-quorum 2
    GATEWAY_PIDS+=("$LAUNCHED")
done
launch api "$BIN/cartdb-api" --listen "127.0.0.1:$API_PORT" --zk "$ZK"
API_PIDS+=("$LAUNCHED")

# cluster_state: prints "<devices up>/<devices> devices up, <n> gateways" from /api/cluster
# and succeeds when all are there.
cluster_state() {
    api_cluster_state "$API_URL" "$DATANODES" "$GATEWAYS"
}

info "waiting (up to ${START_TIMEOUT}s) for all $DATANODES devices and $GATEWAYS gateways in $API_URL/api/cluster"
deadline=$((SECONDS + START_TIMEOUT))
last_state=""
while :; do
    for pid in "${!NAME_OF[@]}"; do
        if ! is_running "$pid"; then
            status=0
            wait "$pid" 2>/dev/null || status=$?
            log_tail "${LOG_OF[$pid]}" 40
            die "${NAME_OF[$pid]} (pid $pid) exited during start-up (status $status); see ${LOG_OF[$pid]}"
        fi
    done
    if state=$(cluster_state); then
        ok "$state"
        break
    fi
    [[ $state != "$last_state" ]] && info "$state"
    last_state=$state
    if ((SECONDS >= deadline)); then
        for pid in "${API_PIDS[@]}" "${GATEWAY_PIDS[@]}"; do log_tail "${LOG_OF[$pid]}" 20; done
        die "the cluster was not ready within ${START_TIMEOUT}s (last: $state)"
    fi
    sleep 0.5
done

cat <<EOF_READY

  cartdb is running. REST API: $API_URL

    curl -s -X POST $API_URL/api/insert -H 'Content-Type: application/json' \\
         -d '{"userid": "alice", "item_name": "pork"}'
    curl -s '$API_URL/api/list_all?userid=alice'

  Admin endpoints need the admin token (the cartdb command reads CARTDB_ADMIN_TOKEN):

    export CARTDB_ADMIN_TOKEN=\$(cat $TOKEN_FILE)
    curl -s $API_URL/api/cluster -H "Authorization: Bearer \$CARTDB_ADMIN_TOKEN"
    target/$PROFILE/cartdb status

  Data and logs: $CLUSTER_HOME (logs in $LOGS)
  Press Ctrl-C to stop the cluster.

EOF_READY

# Wait in the foreground. A process that exits is reported; the rest keep running (the
# cluster tolerates a missing data node or gateway).
while ((${#NAME_OF[@]})); do
    finished=""
    status=0
    wait -n -p finished "${!NAME_OF[@]}" || status=$?
    [[ -n $finished && -n ${NAME_OF[$finished]:-} ]] || continue
    warn "${NAME_OF[$finished]} (pid $finished) exited with status $status"
    log_tail "${LOG_OF[$finished]}" 20
    unset "NAME_OF[$finished]"
done
die "every process of the cluster has exited"

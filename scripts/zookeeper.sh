#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs a standalone ZooKeeper for local work, with everything under one directory.
#
#   scripts/zookeeper.sh start [DIR] [PORT]   (defaults: .cartdb/zookeeper, 2181); returns once imok
#   scripts/zookeeper.sh stop  [DIR]
#   scripts/zookeeper.sh status [PORT]
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/zookeeper.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/zookeeper.sh"

default_dir="${CARTDB_HOME:-$CARTDB_REPO/.cartdb}/zookeeper"
default_port="${CARTDB_ZK_PORT:-2181}"

case "${1:-}" in
start)
    zk_start "${2:-$default_dir}" "${3:-$default_port}"
    ;;
stop)
    zk_stop "${2:-$default_dir}"
    ok "ZooKeeper stopped"
    ;;
status)
    if zk_ruok "${2:-$default_port}"; then
        echo "imok"
    else
        echo "ZooKeeper is not answering on 127.0.0.1:${2:-$default_port}"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 start [DIR] [PORT] | stop [DIR] | status [PORT]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Health check of a cartdb container, for any role; the port comes from CARTDB_LISTEN.
#
#   cartdb-healthcheck             healthy while the process listens on its port (data nodes,
#                                  gateways). It reads /proc/net/tcp{,6} instead of connecting,
#                                  because a probe connection that sends no RPC hello would
#                                  be logged as a refused peer every few seconds.
#   cartdb-healthcheck http PATH   healthy when GET PATH on the port answers 200 (the API
#                                  server's /healthz: 200 while it knows a gateway).
#
# Uses bash only (no curl or netcat in the image).
set -uo pipefail
port=${CARTDB_LISTEN##*:}
[[ $port =~ ^[0-9]+$ ]] || { echo "CARTDB_LISTEN=${CARTDB_LISTEN:-} has no port"; exit 1; }

case ${1:-listening} in
listening)
    hex=$(printf '%04X' "$port")
    # Columns: sl local_address rem_address st ...; state 0A is LISTEN.
    if awk -v port=":$hex" '$2 ~ port"$" && $4 == "0A" { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
        echo "listening on port $port"
    else
        echo "not listening on port $port"
        exit 1
    fi
    ;;
http)
    path=${2:-/healthz}
    exec 3<>"/dev/tcp/127.0.0.1/$port" || { echo "port $port refuses connections"; exit 1; }
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
    IFS= read -r -t 5 status <&3 || { echo "no answer on port $port"; exit 1; }
    status=${status%$'\r'}
    echo "GET $path: $status"
    [[ $status == HTTP/1.?" 200"* ]]
    ;;
*)
    echo "usage: cartdb-healthcheck [listening | http PATH]"
    exit 2
    ;;
esac

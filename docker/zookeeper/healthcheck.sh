#!/usr/bin/env bash
# Healthy when the server answers `ruok` with imok *and* serves: `srvr` reports a Mode
# (standalone, leader or follower) only once it has joined a quorum. Uses bash's /dev/tcp,
# so the image needs no netcat.
set -uo pipefail
port=${ZOO_PORT:-2181}

word() {
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf '%s' "$1" >&3
    timeout 3 cat <&3
    exec 3<&-
}

[[ $(word ruok) == imok ]] || { echo "no imok on port $port"; exit 1; }
mode=$(word srvr | grep '^Mode:') || { echo "not serving yet (no quorum)"; exit 1; }
echo "$mode"

# shellcheck shell=bash
# Shared helpers for cartdb's scripts: messages, the repository root, and polling with a
# deadline. Source it; it defines functions only.

# The repository root (the parent of scripts/).
CARTDB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export CARTDB_REPO

# Messages go to stderr so that a script's stdout stays usable.
if [[ -t 2 ]]; then
    _c_bold=$'\e[1m' _c_red=$'\e[31m' _c_green=$'\e[32m' _c_yellow=$'\e[33m' _c_off=$'\e[0m'
else
    _c_bold='' _c_red='' _c_green='' _c_yellow='' _c_off=''
fi

info() { printf '%s==>%s %s\n' "$_c_bold" "$_c_off" "$*" >&2; }
ok() { printf '%s ok%s %s\n' "$_c_green" "$_c_off" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_c_yellow" "$_c_off" "$*" >&2; }
die() {
    printf '%serror:%s %s\n' "$_c_red" "$_c_off" "$*" >&2
    exit 1
}

# section TITLE: a visible header between the steps of a long script.
section() {
    printf '\n%s========== %s ==========%s\n' "$_c_bold" "$*" "$_c_off" >&2
}

# ensure_secret_file PATH BYTES WHAT: creates PATH with BYTES random bytes in hex, readable by
# this user only, unless it exists and is not empty (a secret is generated once and kept).
ensure_secret_file() {
    local path=$1 bytes=$2 what=$3
    [[ -s $path ]] && return 0
    mkdir -p "$(dirname "$path")"
    (umask 077 && od -An -N"$bytes" -tx1 /dev/urandom | tr -d ' \n' >"$path")
    info "generated $what in $path"
}

# poll_until TIMEOUT_SECONDS DESCRIPTION COMMAND [ARGS...]
# Runs COMMAND until it succeeds or the deadline passes (returns 1 then). Pauses 0.2 s
# between attempts; the command is what is waited for, never the pause.
poll_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            warn "gave up after ${timeout}s waiting for ${what}"
            return 1
        fi
        sleep 0.2
    done
}

# port_in_use PORT: true if something accepts connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# log_tail FILE [LINES]: the last lines of a log, indented, for error reports.
log_tail() {
    local file=$1 lines=${2:-30}
    if [[ -f $file ]]; then
        printf -- '----- last %s lines of %s -----\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/  | /' >&2
    else
        printf -- '----- %s does not exist -----\n' "$file" >&2
    fi
}

# api_cluster_state URL DEVICES GATEWAYS: prints "<up>/<devices> devices up, <n> gateways"
# from URL/api/cluster; succeeds when every device is up and all gateways are registered.
api_cluster_state() {
    python3 - "$1/api/cluster" "$2" "$3" <<'PY'
import json, sys, urllib.error, urllib.request
url, want_devices, want_gateways = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=5) as reply:
        doc = json.load(reply)
except urllib.error.HTTPError as error:
    print(f"API answers {error.code} on /api/cluster")
    sys.exit(1)
except Exception as error:
    print(f"API not answering ({error.__class__.__name__})")
    sys.exit(1)
devices = doc.get("devices") or []
up = [d for d in devices if d.get("up") is True]
gateways = doc.get("gateways") or []
print(f"{len(up)}/{len(devices)} devices up, {len(gateways)} gateways")
ok = len(devices) == want_devices and len(up) == want_devices and len(gateways) == want_gateways
sys.exit(0 if ok else 1)
PY
}

# print_usage SCRIPT: prints SCRIPT's header comment (from line 3 to `set -euo`), its --help.
print_usage() {
    sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$1"
}

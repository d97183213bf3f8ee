# shellcheck shell=bash
# A standalone Apache ZooKeeper (Debian's `zookeeper` package, run directly with java) whose
# configuration, data, log and pid file all live in one directory. Source after common.sh.
#
#   zk_start DIR PORT     writes DIR/zoo.cfg, starts the server, waits for `imok`
#   zk_ruok PORT          true when the server on 127.0.0.1:PORT answers imok and serves
#   zk_stop DIR           SIGTERM, wait (deadline), SIGKILL if it will not go
#
# tickTime is 500 ms (sessions may be as short as 1 s) and the Jetty admin server is off, so
# it never takes port 8080.

ZK_CLASSPATH="${CARTDB_ZK_CLASSPATH:-/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar}"
ZK_START_TIMEOUT="${CARTDB_ZK_START_TIMEOUT:-60}"

# zk_word PORT WORD: sends a four-letter word to 127.0.0.1:PORT and prints the answer.
zk_word() {
    local port=$1 word=$2
    if command -v nc >/dev/null 2>&1; then
        printf '%s' "$word" | timeout 3 nc -w 2 127.0.0.1 "$port" 2>/dev/null
    else
        # Fallback without netcat: bash's /dev/tcp ($1 and $2 expand in the inner shell).
        # shellcheck disable=SC2016
        timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "%s" "$2" >&3 && cat <&3' _ "$port" "$word" 2>/dev/null
    fi
}

# zk_ruok PORT: true when the server answers `ruok` with imok *and* serves requests. ZooKeeper
# says imok as soon as its port is bound, possibly before it accepts sessions; `srvr` reports
# a Mode only once it does.
zk_ruok() {
    local port=$1
    [[ $(zk_word "$port" ruok || true) == imok ]] && [[ $(zk_word "$port" srvr || true) == *Mode:* ]]
}

# zk_pid DIR: the pid of the server started in DIR, if it still runs.
zk_pid() {
    local pid_file="$1/zookeeper.pid" pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && printf '%s\n' "$pid"
}

zk_write_config() {
    local dir=$1 port=$2
    cat >"$dir/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
CFG
}

zk_start() {
    local dir=$1 port=$2 jar pid
    command -v java >/dev/null 2>&1 || die "java not found: run scripts/install-deps.sh"
    for jar in ${ZK_CLASSPATH//:/ }; do
        [[ -f $jar ]] || die "$jar not found: run scripts/install-deps.sh (it installs Debian's zookeeper package)"
    done
    if pid=$(zk_pid "$dir"); then
        die "a ZooKeeper started from $dir still runs (pid $pid); stop it with: scripts/zookeeper.sh stop $dir"
    fi
    if port_in_use "$port"; then
        die "port $port is already in use (another ZooKeeper?); choose another with CARTDB_ZK_PORT"
    fi
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    zk_write_config "$dir" "$port"
    info "starting ZooKeeper on 127.0.0.1:$port (log: $dir/zookeeper.log)"
    # In its own session (setsid), so a Ctrl-C meant for the caller does not reach it first.
    local launcher=()
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    "${launcher[@]}" java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$ZK_CLASSPATH" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
        >>"$dir/zookeeper.log" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$dir/zookeeper.pid"
    # shellcheck disable=SC2034 # for the caller: the server's pid
    ZK_PID=$pid
    if ! poll_until "$ZK_START_TIMEOUT" "ZooKeeper to answer imok" _zk_up_or_dead "$pid" "$port"; then
        log_tail "$dir/zookeeper.log" 40
        kill "$pid" 2>/dev/null || true
        die "ZooKeeper did not start"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        log_tail "$dir/zookeeper.log" 40
        die "ZooKeeper exited during start-up"
    fi
    ok "ZooKeeper answers imok on 127.0.0.1:$port (pid $pid)"
}

# Succeeds when the server answers or has died (the caller tells which).
_zk_up_or_dead() {
    ! kill -0 "$1" 2>/dev/null || zk_ruok "$2"
}

zk_stop() {
    local dir=$1 pid
    pid=$(zk_pid "$dir") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! poll_until 15 "ZooKeeper (pid $pid) to exit" _pid_gone "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/zookeeper.pid"
}

_pid_gone() {
    ! kill -0 "$1" 2>/dev/null
}

#!/usr/bin/env bash
# Starts ZooKeeper in the foreground, configured from the environment like the official
# image's docker-entrypoint.sh: when $ZOO_CONF_DIR/zoo.cfg does not exist it is written from
# ZOO_* variables, and $ZOO_DATA_DIR/myid from ZOO_MY_ID when it does not exist.
#
#   ZOO_MY_ID                 this server's id in the ensemble (default 1)
#   ZOO_SERVERS               space-separated `server.N=host:peerPort:electionPort;clientPort`
#                             entries (default: a single local server)
#   ZOO_TICK_TIME, ZOO_INIT_LIMIT, ZOO_SYNC_LIMIT, ZOO_MAX_CLIENT_CNXNS, ZOO_STANDALONE_ENABLED,
#   ZOO_ADMINSERVER_ENABLED, ZOO_4LW_COMMANDS_WHITELIST, ZOO_AUTOPURGE_PURGEINTERVAL,
#   ZOO_AUTOPURGE_SNAPRETAINCOUNT, ZOO_PORT (client port)
#   ZOO_DATA_LOG_DIR          transaction log directory (default: in ZOO_DATA_DIR)
#   ZOO_CFG_EXTRA             more space-separated key=value lines for zoo.cfg
#   JVMFLAGS                  JVM options (heap, GC)
#
# Any other command is run as given (e.g. `docker run ... bash`).
set -euo pipefail

if (($# > 0)); then
    exec "$@"
fi

config="$ZOO_CONF_DIR/zoo.cfg"
if [[ ! -f $config ]]; then
    {
        echo "dataDir=$ZOO_DATA_DIR"
        if [[ -n ${ZOO_DATA_LOG_DIR:-} ]]; then echo "dataLogDir=$ZOO_DATA_LOG_DIR"; fi
        echo "clientPort=$ZOO_PORT"
        echo "tickTime=$ZOO_TICK_TIME"
        echo "initLimit=$ZOO_INIT_LIMIT"
        echo "syncLimit=$ZOO_SYNC_LIMIT"
        echo "autopurge.snapRetainCount=$ZOO_AUTOPURGE_SNAPRETAINCOUNT"
        echo "autopurge.purgeInterval=$ZOO_AUTOPURGE_PURGEINTERVAL"
        echo "maxClientCnxns=$ZOO_MAX_CLIENT_CNXNS"
        echo "standaloneEnabled=$ZOO_STANDALONE_ENABLED"
        echo "admin.enableServer=$ZOO_ADMINSERVER_ENABLED"
        echo "4lw.commands.whitelist=$ZOO_4LW_COMMANDS_WHITELIST"
        # Peers bind on every interface: a container's own name may resolve to an address
        # it does not have yet while the network is being set up.
        echo "quorumListenOnAllIPs=true"
        for server in ${ZOO_SERVERS:-server.1=localhost:2888:3888;$ZOO_PORT}; do
            echo "$server"
        done
        for entry in ${ZOO_CFG_EXTRA:-}; do
            echo "$entry"
        done
    } >"$config"
fi
if [[ ! -f $ZOO_DATA_DIR/myid ]]; then
    echo "${ZOO_MY_ID:-1}" >"$ZOO_DATA_DIR/myid"
fi
echo "zookeeper-entrypoint: server ${ZOO_MY_ID:-1}, $config:" >&2
sed 's/^/  /' "$config" >&2

classpath=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
# The log goes to stderr; NIOServerCnxn only at warn, or every health check's ruok and srvr
# would be logged.
# shellcheck disable=SC2086 # JVMFLAGS is a list of options
exec java $JVMFLAGS \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.dateTimeFormat="yyyy-MM-dd'T'HH:mm:ss.SSSZ" \
    -Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn \
    -cp "$classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain "$config"

# shellcheck shell=bash
# Docker helpers for the compose scripts (compose-up.sh, compose-test.sh, compose-down.sh).
# Source after common.sh; it defines functions and a few settings only.
#
#   docker_install_missing      apt-get installs docker.io and docker-compose if missing
#   docker_ensure_daemon        starts dockerd in the background when none answers
#                               (sets DOCKERD_STARTED=1 when this shell started it)
#   docker_stop_started_daemon  stops the dockerd that docker_ensure_daemon started, if any
#   docker_ensure_base_image    debian:bookworm-slim: kept if present, else pulled, else made
#                               locally with debootstrap (there is no registry on CI machines)
#   compose_init                sets COMPOSE=(the compose command with -f compose.yaml -p NAME)
#   cartdb_build_images         cargo build --release (into release_target_dir), stages
#                               stripped binaries and the policies into docker/cartdb/dist/,
#                               builds both images
#
# Settings (environment): CARTDB_COMPOSE ("docker compose" or "docker-compose"; default: v2
# when installed, else v1), COMPOSE_PROJECT_NAME (compose's own; default: the directory
# name, as plain `docker compose` does), CARTDB_BASE_IMAGE_PULL (auto: try `docker pull`
# before debootstrap; never: always debootstrap), CARTDB_DEBIAN_MIRROR
# (http://deb.debian.org/debian), CARTDB_DOCKERD_TIMEOUT (seconds, 60).

CARTDB_BASE_IMAGE="debian:bookworm-slim"
CARTDB_DEBIAN_MIRROR="${CARTDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERD_LOG="${CARTDB_DOCKERD_LOG:-/var/log/cartdb-dockerd.log}"
DOCKERD_STARTED=0
# The glibc of debian:bookworm-slim: host-built binaries must not need a newer one.
BOOKWORM_GLIBC="2.36"

# as_root COMMAND...: runs COMMAND as root (directly, or through sudo).
as_root() {
    if ((EUID == 0)); then
        "$@"
    else
        command -v sudo >/dev/null 2>&1 || die "'$*' needs root: run as root or install sudo"
        sudo "$@"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is not available: install them by hand"
    info "installing $* (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    ok "installed $*"
}

compose_v2_present() { docker compose version >/dev/null 2>&1; }

docker_install_missing() {
    local missing=()
    command -v docker >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    if ! command -v docker-compose >/dev/null 2>&1 && ! compose_v2_present; then
        missing+=(docker-compose)
    fi
    if ((${#missing[@]})); then
        apt_install "${missing[@]}"
    else
        ok "docker and compose present"
    fi
}

docker_answers() { docker info >/dev/null 2>&1; }

docker_ensure_daemon() {
    local started=$SECONDS
    if docker_answers; then
        ok "dockerd answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        return 0
    fi
    if [[ -S /var/run/docker.sock ]] && docker info 2>&1 | grep -qi 'permission denied'; then
        die "dockerd runs but $(id -un) may not use it: run as root or join the docker group"
    fi
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        info "starting dockerd (systemctl start docker)"
        as_root systemctl start docker || true
    fi
    if ! docker_answers; then
        command -v dockerd >/dev/null 2>&1 || die "dockerd not found (install docker.io)"
        info "starting dockerd in the background (log: $DOCKERD_LOG)"
        as_root setsid -f sh -c "exec dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null"
        DOCKERD_STARTED=1
    fi
    if ! poll_until "${CARTDB_DOCKERD_TIMEOUT:-60}" "dockerd to answer docker info" docker_answers; then
        log_tail "$DOCKERD_LOG" 30
        die "dockerd did not start (the kernel may lack what it needs: overlayfs, cgroups, iptables)"
    fi
    ok "dockerd answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null)), started in $((SECONDS - started))s"
}

docker_stop_started_daemon() {
    ((DOCKERD_STARTED)) || return 0
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null) || return 0
    [[ -n $pid ]] || return 0
    info "stopping the dockerd this script started (pid $pid; images and build cache are kept)"
    as_root kill -TERM "$pid" 2>/dev/null || true
    poll_until 30 "dockerd (pid $pid) to exit" _docker_pid_gone "$pid" || true
    DOCKERD_STARTED=0
}

_docker_pid_gone() { ! kill -0 "$1" 2>/dev/null; }

docker_ensure_base_image() {
    if docker image inspect "$CARTDB_BASE_IMAGE" >/dev/null 2>&1; then
        ok "$CARTDB_BASE_IMAGE present (kept between runs)"
        return 0
    fi
    if [[ ${CARTDB_BASE_IMAGE_PULL:-auto} != never ]]; then
        info "$CARTDB_BASE_IMAGE absent: trying docker pull"
        if timeout 300 docker pull -q "$CARTDB_BASE_IMAGE"; then
            ok "pulled $CARTDB_BASE_IMAGE"
            return 0
        fi
        info "no registry reachable: making $CARTDB_BASE_IMAGE locally with debootstrap"
    fi
    docker_make_base_image
}

# docker_make_base_image: debootstrap --variant=minbase bookworm, trimmed the way Debian's
# official slim images are (no docs, man pages or locales; apt caches cleaned after every
# install), then `docker import`ed as debian:bookworm-slim.
docker_make_base_image() {
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local root started=$SECONDS
    root=$(mktemp -d /var/tmp/cartdb-bookworm.XXXXXX)
    # shellcheck disable=SC2064 # expand $root now
    trap "as_root rm -rf '$root'" RETURN
    info "debootstrap --variant=minbase bookworm from $CARTDB_DEBIAN_MIRROR (about a minute)"
    if ! as_root debootstrap --variant=minbase bookworm "$root" "$CARTDB_DEBIAN_MIRROR" \
        >"$root.log" 2>&1; then
        log_tail "$root.log" 30
        die "debootstrap failed (log: $root.log)"
    fi
    rm -f "$root.log"
    as_root bash "$CARTDB_REPO/docker/base/slim.sh" "$root"
    info "importing the root file system as $CARTDB_BASE_IMAGE"
    as_root tar --numeric-owner -C "$root" -c . |
        docker import \
            --change 'CMD ["bash"]' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'LABEL org.cartdb.base="debootstrap --variant=minbase bookworm, trimmed by docker/base/slim.sh"' \
            - "$CARTDB_BASE_IMAGE" >/dev/null
    ok "made $CARTDB_BASE_IMAGE in $((SECONDS - started))s ($(image_size "$CARTDB_BASE_IMAGE"))"
}

# image_size IMAGE: its size in MB, as `docker image ls` counts it.
image_size() {
    local bytes
    bytes=$(docker image inspect --format '{{.Size}}' "$1" 2>/dev/null) || {
        echo "absent"
        return
    }
    echo "$((bytes / 1000000)) MB"
}

# compose_init [EXTRA_COMPOSE_FILE...]: sets COMPOSE; extra files are added after compose.yaml.
compose_init() {
    local choice=${CARTDB_COMPOSE:-} extra
    if [[ -z $choice ]]; then
        if compose_v2_present; then
            choice="docker compose"
        elif command -v docker-compose >/dev/null 2>&1; then
            choice="docker-compose"
        else
            die "neither 'docker compose' nor 'docker-compose' is installed"
        fi
    fi
    read -r -a COMPOSE <<<"$choice"
    COMPOSE+=(-f "$CARTDB_REPO/compose.yaml")
    COMPOSE_MONITORING=0
    for extra in "$@"; do
        COMPOSE+=(-f "$extra")
        [[ $extra == */compose-monitoring.yaml ]] && COMPOSE_MONITORING=1
    done
    [[ -n ${COMPOSE_PROJECT_NAME:-} ]] && COMPOSE+=(-p "$COMPOSE_PROJECT_NAME")
    # Compose v1 prints its own progress; keep its output plain when not on a terminal.
    [[ -t 1 ]] || export COMPOSE_INTERACTIVE_NO_CLI=1
    return 0
}

# The release binaries and policies that make up the cartdb image.
CARTDB_IMAGE_BINARIES=(cartdb cartdb-datanode cartdb-gateway cartdb-api)
CARTDB_IMAGE_POLICIES=(crush.wasm merge.wasm merge-lww.wasm)

# stage_dist TARGET_DIR: copies the stripped release binaries and the policies into
# docker/cartdb/dist/ (the image's build context), refusing binaries that need a newer glibc
# than the image's.
stage_dist() {
    local target=$1 dist="$CARTDB_REPO/docker/cartdb/dist" name needed
    mkdir -p "$dist/bin" "$dist/policies"
    for name in "${CARTDB_IMAGE_BINARIES[@]}"; do
        [[ -f $target/release/$name ]] || die "$target/release/$name not found (cargo build --release --workspace)"
        needed=$(glibc_needed "$target/release/$name")
        if [[ -n $needed ]] && ! version_at_most "$needed" "$BOOKWORM_GLIBC"; then
            die "$name needs glibc $needed but debian:bookworm-slim has $BOOKWORM_GLIBC: build on Debian 12 (or older) so the host-built binaries run in the image"
        fi
        objcopy --strip-all "$target/release/$name" "$dist/bin/$name.tmp"
        _replace_if_changed "$dist/bin/$name.tmp" "$dist/bin/$name"
    done
    for name in "${CARTDB_IMAGE_POLICIES[@]}"; do
        [[ -f $target/policies/$name ]] || die "$target/policies/$name not found (cargo build --release --workspace)"
        cp "$target/policies/$name" "$dist/policies/$name.tmp"
        _replace_if_changed "$dist/policies/$name.tmp" "$dist/policies/$name"
    done
    ok "staged $(du -sh "$dist" | cut -f1) in docker/cartdb/dist (stripped binaries + policies)"
}

# Keeps the old file (and its mtime) when the content is the same.
_replace_if_changed() {
    if cmp -s "$1" "$2"; then rm -f "$1"; else mv -f "$1" "$2"; fi
}

# glibc_needed BINARY: the newest GLIBC_x.y symbol version it references.
glibc_needed() {
    objdump -T "$1" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1
}

version_at_most() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n 1) == "$2" ]]; }

# release_target_dir: where the release build goes. CARGO_TARGET_DIR when set; in CI
# (CI=true) a directory kept on the machine between runs, because CI starts from a fresh
# clone whose target/ is empty and a cold release build takes about 10 minutes on 2 cores
# (CARTDB_CI_TARGET_DIR, default ~/.cache/cartdb/release-target); else the repository's
# target/, shared with start-cluster.sh and cargo.
release_target_dir() {
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        echo "$CARGO_TARGET_DIR"
    elif [[ ${CI:-} == true ]]; then
        echo "${CARTDB_CI_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cartdb/release-target}"
    else
        echo "$CARTDB_REPO/target"
    fi
}

cartdb_build_images() {
    local target started
    target=$(release_target_dir)
    command -v objcopy >/dev/null 2>&1 || apt_install binutils
    started=$SECONDS
    info "cargo build --release --workspace into $target (nothing to do when already built)"
    (cd "$CARTDB_REPO" && CARGO_TARGET_DIR=$target cargo build --release --workspace) ||
        die "cargo build --release failed"
    ok "release build ready in $((SECONDS - started))s"
    stage_dist "$target"
    started=$SECONDS
    # One service per image: the others name the same image (and would only hit the cache).
    local services=(zookeeper-1 datanode-1)
    ((COMPOSE_MONITORING)) && services+=(prometheus)
    info "${COMPOSE[*]} build ${services[*]} (cached layers are reused)"
    "${COMPOSE[@]}" build "${services[@]}" || die "building the images failed"
    ok "images built in $((SECONDS - started))s: cartdb $(image_size cartdb:local), cartdb-zookeeper $(image_size cartdb-zookeeper:local)$( ((COMPOSE_MONITORING)) && echo ", cartdb-prometheus $(image_size cartdb-prometheus:local)")"
}

# compose_project: the project's name, as compose labels its containers.
compose_project() {
    local id
    id=$("${COMPOSE[@]}" ps -q 2>/dev/null | head -n 1)
    if [[ -n $id ]]; then
        docker inspect --format '{{index .Config.Labels "com.docker.compose.project"}}' "$id"
    else
        echo "${COMPOSE_PROJECT_NAME:-$(basename "$CARTDB_REPO")}"
    fi
}

# compose_health: one line per container, "service state health" (health is "-" for a
# container without a health check).
compose_health() {
    local ids
    ids=$("${COMPOSE[@]}" ps -q 2>/dev/null) || return 1
    [[ -n $ids ]] || return 0
    # shellcheck disable=SC2086 # one argument per container id
    docker inspect --format \
        '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}' \
        $ids
}

# compose_wait_ready TIMEOUT API_URL: waits until every service's container runs and is
# healthy, and the API reports all 6 devices up and both gateways. Prints what changes.
compose_wait_ready() {
    local timeout=$1 url=$2 deadline services want state last="" health not_ready cluster
    deadline=$((SECONDS + timeout))
    services=$("${COMPOSE[@]}" config --services)
    want=$(wc -l <<<"$services")
    while :; do
        health=$(compose_health || true)
        not_ready=$(awk '$2 != "running" || ($3 != "healthy" && $3 != "-") { printf "%s(%s) ", $1, ($2 == "running" ? $3 : $2) }' <<<"$health")
        local count
        count=$(grep -c . <<<"$health" || true)
        if [[ -z $not_ready && $count -ge $want ]]; then
            if cluster=$(api_cluster_state "$url" 6 2); then
                ok "$count/$want containers healthy; $cluster"
                return 0
            fi
            state="$count/$want containers healthy; $cluster"
        else
            state="waiting for ${not_ready:-containers ($count/$want)}"
        fi
        [[ $state != "$last" ]] && info "$state"
        last=$state
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# compose_report_unhealthy: the state and last log lines of every container that is not
# running and healthy, for a failure report.
compose_report_unhealthy() {
    local service status health
    while read -r service status health; do
        [[ -n $service ]] || continue
        if [[ $status != running || ($health != healthy && $health != -) ]]; then
            warn "$service: $status ${health}"
            "${COMPOSE[@]}" logs --no-color --tail=30 "$service" 2>&1 | sed 's/^/  | /' >&2 || true
        fi
    done < <(compose_health || true)
}

#!/usr/bin/env bash
# Multi-node test bed for gpuspawner: a Docker Swarm of three engines on one
# machine, each in a network namespace of its own, each advertising test GPUs
# as Swarm generic resources. See deploy/swarm/README.md and /work/shared/TESTBED.md.
#
#   testbed-swarm.sh up      make the bridge, namespaces and engines; form the Swarm;
#                            load the single-user image on every node (cached)
#   testbed-swarm.sh isolate HUB_PORT
#                            the lab network (deploy/swarm/lab-network.sh) on every node,
#                            its rules leaving servers only $HUB_ADDR:HUB_PORT (the hub's API)
#   testbed-swarm.sh env     print export lines for eval
#   testbed-swarm.sh status  nodes, their state and their GPUs
#   testbed-swarm.sh down    stop the engines this script started, remove the
#                            iptables rule, the namespaces and the bridge
#                            (data kept: the next `up` takes seconds)
#   testbed-swarm.sh clean   down, then delete every node's data
#
# Network: a bridge $BR with 10.231.0.1/24 in the root namespace (the hub's
# side), and node i in namespace gpusw-n<i> with 10.231.0.1<i>/24. Nothing is
# routed anywhere else: all traffic stays in these namespaces and loopback.
#
# Environment:
#   GPUSPAWNER_SWARM_TESTBED  state directory (default /var/lib/gpuspawner-testbed-swarm)
#   GPUSPAWNER_TESTBED        the single-engine test bed whose image is loaded
#                             (default /var/lib/gpuspawner-testbed; run testbed.sh all first)
#   SWARM_NODES               how many nodes (default 3)
#   SWARM_GPUS_PER_NODE       test GPUs each node advertises (default 2)
#
# The last node also advertises two MIG instances (kind NVIDIA-MIG-1g.10gb), as a
# node with a GPU in MIG mode would. An engine whose advertised units changed is
# restarted by `up`.
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$HERE/../.." && pwd)"

DIR="${GPUSPAWNER_SWARM_TESTBED:-/var/lib/gpuspawner-testbed-swarm}"
ONE="${GPUSPAWNER_TESTBED:-/var/lib/gpuspawner-testbed}"
NODES="${SWARM_NODES:-3}"
GPUS_PER_NODE="${SWARM_GPUS_PER_NODE:-2}"
NET=10.231.0
BR=gpusw-br0
HUB_ADDR="$NET.1"
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
GPU_KIND=NVIDIA-GPU

log() { printf '[testbed-swarm] %s\n' "$*" >&2; }
die() { printf '[testbed-swarm] ERROR: %s\n' "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

ns() { echo "gpusw-n$1"; }
addr() { echo "$NET.1$1"; }
host() { echo "gpu-node-$1"; }
ndir() { echo "$DIR/n$1"; }
sock() { echo "$(ndir "$1")/docker.sock"; }
# A test GPU uuid: fixed, so a restarted node advertises the same units.
gpu_uuid() { printf 'GPU-5a4d0000-0000-4000-8000-0000000%02d%03d' "$1" "$2"; }
mig_uuid() { printf 'MIG-5a4d0000-0000-4000-8000-0000000%02d%03d' "$1" "$2"; }
MIG_KIND=NVIDIA-MIG-1g.10gb

if [ -x /usr/bin/docker ]; then DOCKER_BIN=/usr/bin/docker; DOCKER_API=; else
    DOCKER_BIN="$(command -v docker || true)"; DOCKER_API=1.41; fi

# ndocker I ARGS: the docker client of node I (private client config, its socket only).
ndocker() {
    local i=$1
    shift
    mkdir -p "$DIR/client"
    env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
        DOCKER_HOST="unix://$(sock "$i")" DOCKER_CONFIG="$DIR/client" \
        ${DOCKER_API:+DOCKER_API_VERSION=$DOCKER_API} "$DOCKER_BIN" -H "unix://$(sock "$i")" "$@"
}
odocker() {  # the single-engine test bed's client, to save the image from
    env -u DOCKER_CONTEXT DOCKER_CONFIG="$DIR/client" ${DOCKER_API:+DOCKER_API_VERSION=$DOCKER_API} \
        "$DOCKER_BIN" -H "unix://$ONE/docker.sock" "$@"
}

take_lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    flock -n 9 || { log "waiting for another testbed-swarm.sh"; flock 9; }
}

# --- network -----------------------------------------------------------------------
FORWARD_RULE=(FORWARD -i "$BR" -o "$BR" -j ACCEPT)

check_range_free() {
    # Our range must not be someone else's: only our bridge may hold it.
    if ip -o addr show | grep -v " $BR " | grep -q " $NET\."; then
        die "$NET.0/24 is already used on this machine (ip addr); refusing to set up"
    fi
    if ip route show | grep -v "dev $BR" | grep -q "^$NET\."; then
        die "$NET.0/24 is already routed on this machine (ip route); refusing to set up"
    fi
}

net_up() {
    check_range_free
    if ! ip link show "$BR" >/dev/null 2>&1; then
        ip link add "$BR" type bridge
        ip addr add "$HUB_ADDR/24" dev "$BR"
    fi
    ip link set "$BR" up
    # Another engine on the machine may have set FORWARD to DROP; bridged frames
    # pass through iptables here. Ours, and removed by `down`.
    iptables -C "${FORWARD_RULE[@]}" 2>/dev/null || iptables -I "${FORWARD_RULE[@]}"
    local i n
    for i in $(seq 1 "$NODES"); do
        n="$(ns "$i")"
        [ -e "/var/run/netns/$n" ] || ip netns add "$n"
        if ! ip link show "$n-h" >/dev/null 2>&1; then
            ip link add "$n-h" type veth peer name "$n-c"
            ip link set "$n-h" master "$BR" up
            ip link set "$n-c" netns "$n"
            ip -n "$n" link set "$n-c" name eth0
            ip -n "$n" addr add "$(addr "$i")/24" dev eth0
        fi
        ip -n "$n" link set lo up
        ip -n "$n" link set eth0 up
    done
}

net_down() {
    local i n
    for i in $(seq 1 "$NODES"); do
        n="$(ns "$i")"
        ip link del "$n-h" 2>/dev/null || true
        [ -e "/var/run/netns/$n" ] && ip netns del "$n"
    done
    ip link del "$BR" 2>/dev/null || true
    while iptables -C "${FORWARD_RULE[@]}" 2>/dev/null; do iptables -D "${FORWARD_RULE[@]}"; done
}

# --- engines -----------------------------------------------------------------------
# The pid of node I's dockerd, if it is the one this script started.
node_pid() {
    local pidfile pid
    pidfile="$(ndir "$1")/docker.pid"
    [ -s "$pidfile" ] || return 1
    pid="$(cat "$pidfile")"
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "--pidfile=$pidfile" || return 1
    echo "$pid"
}

node_answers() { ndocker "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

engine_up() {
    local i=$1 d pid t args=() g
    d="$(ndir "$i")"
    for g in $(seq 0 $((GPUS_PER_NODE - 1))); do
        args+=(--node-generic-resource "$GPU_KIND=$(gpu_uuid "$i" "$g")")
    done
    if [ "$i" = "$NODES" ]; then
        for g in 0 1; do args+=(--node-generic-resource "$MIG_KIND=$(mig_uuid "$i" "$g")"); done
    fi
    # iptables on, as on a real node: Docker's rules (NAT of docker_gwbridge for servers in a network of
    # their own, published ports, no traffic between containers on docker_gwbridge) and `isolate`'s rules
    # live in the node's own namespace, never in the machine's.
    args+=(--iptables=true --ip-masq=true --ip-forward=true)
    if pid="$(node_pid "$i")"; then
        [ "$(cat "$d/args" 2>/dev/null || true)" = "${args[*]}" ] && return 0
        log "node $i has other settings now (units, iptables): restarting its engine"
        engine_down "$i"
    fi
    [ -x /usr/sbin/dockerd ] || die "no /usr/sbin/dockerd; run deploy/testbed/testbed.sh install"
    mkdir -p "$d/data" "$d/exec"
    rm -f "$d/docker.pid" "$d/docker.sock"
    [ -f "$d/daemon.json" ] || printf '{}\n' >"$d/daemon.json"
    printf '%s\n' "${args[*]}" >"$d/args"
    echo "=== $(date -Is) up" >>"$d/dockerd.log"
    # nsenter, not `ip netns exec`: that remounts /sys and dockerd then finds no
    # devices cgroup. unshare --uts: each node reports its own hostname.
    env -i PATH="$SYS_PATH" HOME=/root LANG=C.UTF-8 \
        setsid nohup nsenter --net="/var/run/netns/$(ns "$i")" \
        unshare --uts sh -c 'hostname "$0"; exec "$@"' "$(host "$i")" \
        /usr/sbin/dockerd \
        --config-file="$d/daemon.json" \
        --data-root="$d/data" \
        --exec-root="$d/exec" \
        --pidfile="$d/docker.pid" \
        --host="unix://$d/docker.sock" \
        --containerd-namespace="gpusw-n$i" \
        --containerd-plugins-namespace="gpusw-n$i-plugins" \
        --cgroup-parent="/gpuspawner-testbed-swarm-n$i" \
        --bridge=none \
        "${args[@]}" \
        </dev/null >>"$d/dockerd.log" 2>&1 9>&- &
    disown $! 2>/dev/null || true
    t=0
    until node_answers "$i"; do
        [ $t -lt 120 ] || { tail -n 20 "$d/dockerd.log" >&2; die "node $i did not answer in 60 s"; }
        sleep 0.5
        t=$((t + 1))
    done
}

engine_down() {
    local i=$1 pid
    pid="$(node_pid "$i")" || return 0
    kill -TERM "$pid"
    for _ in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    die "node $i dockerd (pid $pid) still running 60 s after SIGTERM"
}

swarm_state() { ndocker "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }

swarm_up() {
    if [ "$(swarm_state 1)" != active ]; then
        ndocker 1 swarm init --advertise-addr "$(addr 1)" --listen-addr "$(addr 1):2377" >/dev/null
    fi
    local token i
    token="$(ndocker 1 swarm join-token -q worker)"
    for i in $(seq 2 "$NODES"); do
        if [ "$(swarm_state "$i")" != active ]; then
            ndocker "$i" swarm join --advertise-addr "$(addr "$i")" --listen-addr "$(addr "$i"):2377" \
                --token "$token" "$(addr 1):2377" >/dev/null
        fi
    done
    # Every node ready and active (a test may have drained one and died).
    local t=0 ready
    while :; do
        ready="$(ndocker 1 node ls --format '{{.Hostname}} {{.Status}} {{.Availability}}' | grep -c ' Ready Active$' || true)"
        [ "$ready" -ge "$NODES" ] && break
        [ $t -lt 120 ] || { ndocker 1 node ls >&2; die "not all $NODES nodes ready in 60 s"; }
        for id in $(ndocker 1 node ls -q); do
            ndocker 1 node update --availability active "$id" >/dev/null 2>&1 || true
        done
        sleep 0.5
        t=$((t + 1))
    done
}

# --- the image on every node (no registry: docker save | docker load) -----------
images_up() {
    local image i id tar
    [ -s "$ONE/image" ] || die "no $ONE/image: run deploy/testbed/testbed.sh all first"
    image="$(cat "$ONE/image")"
    echo "$image" >"$DIR/image"
    tar=""
    for i in $(seq 1 "$NODES"); do
        ndocker "$i" image inspect "$image" >/dev/null 2>&1 && continue
        if [ -z "$tar" ]; then
            id="$(odocker image inspect --format '{{.Id}}' "$image")" \
                || die "$image is not on the test engine: run deploy/testbed/testbed.sh all"
            tar="$DIR/cache/image-${id#sha256:}.tar"
            if [ ! -s "$tar" ]; then
                mkdir -p "$DIR/cache"
                rm -f "$DIR"/cache/image-*.tar
                log "docker save $image"
                odocker save -o "$tar.tmp" "$image"
                mv "$tar.tmp" "$tar"
            fi
        fi
        log "docker load on node $i"
        ndocker "$i" load -q -i "$tar" >/dev/null
    done
}

do_up() {
    need_root up
    local t0=$EPOCHREALTIME i
    net_up
    for i in $(seq 1 "$NODES"); do engine_up "$i"; done
    swarm_up
    images_up
    log "up: $NODES nodes, $GPUS_PER_NODE GPUs each, manager unix://$(sock 1) ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s)"
}

# The lab network on every node, each node's iptables rules in its own namespace.
do_isolate() {
    need_root isolate
    local port=${1:-} i api
    [[ "$port" =~ ^[0-9]+$ ]] || die "usage: testbed-swarm.sh isolate HUB_PORT"
    api=${DOCKER_API:+env DOCKER_API_VERSION=$DOCKER_API }
    for i in $(seq 1 "$NODES"); do
        DOCKER="${api}$DOCKER_BIN -H unix://$(sock "$i")" \
            nsenter --net="/var/run/netns/$(ns "$i")" bash "$HERE/lab-network.sh" node "10.232.$i.0/24" "$HUB_ADDR" "$port"
    done
    DOCKER="${api}$DOCKER_BIN -H unix://$(sock 1)" bash "$HERE/lab-network.sh" swarm
}

do_down() {
    need_root down
    local i
    for i in $(seq 1 "$NODES"); do engine_down "$i"; done
    net_down
    log "down"
}

do_clean() {
    do_down
    local i
    for i in $(seq 1 "$NODES"); do
        rm -rf --one-file-system "$(ndir "$i")"
    done
    rm -rf --one-file-system "$DIR/cache"
}

do_env() {
    printf 'export GPUSPAWNER_SWARM_TESTBED=%q\n' "$DIR"
    printf 'export GPUSPAWNER_SWARM_MANAGER=%q\n' "unix://$(sock 1)"
    printf 'export GPUSPAWNER_SWARM_HUB_IP=%q\n' "$HUB_ADDR"
    printf 'export GPUSPAWNER_SWARM_NODES=%q\n' "$NODES"
    [ -s "$DIR/image" ] && printf 'export GPUSPAWNER_SWARM_IMAGE=%q\n' "$(cat "$DIR/image")"
    return 0
}

do_status() {
    local i
    for i in $(seq 1 "$NODES"); do
        if pid="$(node_pid "$i")"; then echo "node $i: $(host "$i") $(addr "$i") pid $pid unix://$(sock "$i")"
        else echo "node $i: not running"; fi
    done
    node_pid 1 >/dev/null && ndocker 1 node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}'
    return 0
}

case "${1:-}" in
    up) take_lock; do_up ;;
    isolate) take_lock; do_isolate "${2:-}" ;;
    down) take_lock; do_down ;;
    clean) take_lock; do_clean ;;
    env) do_env ;;
    status) do_status ;;
    -h|--help|help|"") sed -n '2,31p' "$SELF" | sed 's/^# \{0,1\}//' ;;
    *) die "unknown command: $1" ;;
esac

#!/usr/bin/env bash
# A lab network of its own for the servers of a Swarm lab (docs/how-to/multi-host.md).
#
#   lab-network.sh node SUBNET HUB_ADDR HUB_PORT
#       on every GPU node, as root: this node's part of the network (its bridge, with
#       traffic between containers off) and the rules that leave its servers only the
#       hub's API; run it again after a change (idempotent)
#   lab-network.sh swarm
#       on a manager, once every node has its part: the Swarm network servers join
#       (c.SwarmGPUSpawner.network_name, "gpuspawner-lab" by default)
#   lab-network.sh check HUB_ADDR HUB_PORT
#       on a node: are the node's part and its rules in place? (exit 1 if not)
#   lab-network.sh remove
#       on a node: its rules, then its part of the network (after the Swarm network is removed)
#
# SUBNET is a private range of this node alone (each node NATs its own servers), e.g.
# 10.232.1.0/24 on node 1, 10.232.2.0/24 on node 2. HUB_ADDR:HUB_PORT is where servers
# reach the hub's API (JupyterHub's hub_connect_ip or hub_ip, and hub_port).
#
# Why a "swarm"-scoped bridge and not an overlay: on Docker 20.10, a node's first task on
# an overlay network updates the node, and Swarm then rejects the running tasks on it that
# hold generic resources (GPUs): "assigned node no longer meets constraints". A bridge
# made from each node's own config does not update the node.
#
# Environment: LAB_NETWORK (gpuspawner-lab), LAB_BRIDGE (gpusrv0), DOCKER (docker),
# IPTABLES (iptables). Needs Docker's iptables on (its default): NAT to the hub, and
# com.docker.network.bridge.enable_icc=false, are Docker's rules.
set -euo pipefail

NETWORK="${LAB_NETWORK:-gpuspawner-lab}"
CONFIG="$NETWORK-config"
BRIDGE="${LAB_BRIDGE:-gpusrv0}"
CHAIN=GPUSPAWNER-LAB
read -r -a DOCKER <<<"${DOCKER:-docker}"
read -r -a IPT <<<"${IPTABLES:-iptables}"

log() { printf '[lab-network] %s\n' "$*" >&2; }
die() { printf '[lab-network] ERROR: %s\n' "$*" >&2; exit 1; }

# The servers' traffic that enters the node (INPUT) or leaves it (DOCKER-USER, which Docker's
# FORWARD rules consult first): replies, and new connections to the hub's API. Nothing else:
# not the node's own ports, not other servers' published ports, not the rest of the network.
rules() {
    local hub=$1 port=$2 chain
    "${IPT[@]}" -N "$CHAIN" 2>/dev/null || "${IPT[@]}" -F "$CHAIN"
    "${IPT[@]}" -A "$CHAIN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    "${IPT[@]}" -A "$CHAIN" -p tcp -d "$hub" --dport "$port" -j RETURN
    "${IPT[@]}" -A "$CHAIN" -p tcp -j REJECT --reject-with tcp-reset
    "${IPT[@]}" -A "$CHAIN" -j REJECT
    for chain in INPUT DOCKER-USER; do
        "${IPT[@]}" -C "$chain" -i "$BRIDGE" -j "$CHAIN" 2>/dev/null || "${IPT[@]}" -I "$chain" -i "$BRIDGE" -j "$CHAIN"
    done
}

do_node() {
    [ $# -eq 3 ] || die "usage: lab-network.sh node SUBNET HUB_ADDR HUB_PORT"
    local subnet=$1 hub=$2 port=$3
    "${IPT[@]}" -nL DOCKER-USER >/dev/null 2>&1 || die "no DOCKER-USER chain: start dockerd with iptables on"
    if ! "${DOCKER[@]}" network inspect "$CONFIG" >/dev/null 2>&1; then
        "${DOCKER[@]}" network create --config-only --subnet "$subnet" \
            --opt com.docker.network.bridge.name="$BRIDGE" \
            --opt com.docker.network.bridge.enable_icc=false "$CONFIG" >/dev/null
        log "made $CONFIG ($subnet, bridge $BRIDGE, no traffic between containers)"
    fi
    rules "$hub" "$port"
    log "servers on $BRIDGE reach only $hub:$port"
}

do_swarm() {
    if ! "${DOCKER[@]}" network inspect "$NETWORK" >/dev/null 2>&1; then
        "${DOCKER[@]}" network create --driver bridge --scope swarm --config-from "$CONFIG" "$NETWORK" >/dev/null
        log "made the Swarm network $NETWORK"
    fi
}

do_check() {
    [ $# -eq 2 ] || die "usage: lab-network.sh check HUB_ADDR HUB_PORT"
    local hub=$1 port=$2 ok=0 chain
    [ "$("${DOCKER[@]}" network inspect --format '{{index .Options "com.docker.network.bridge.enable_icc"}}' \
        "$CONFIG" 2>/dev/null)" = false ] || { log "no $CONFIG with enable_icc=false"; ok=1; }
    for chain in INPUT DOCKER-USER; do
        "${IPT[@]}" -C "$chain" -i "$BRIDGE" -j "$CHAIN" 2>/dev/null || { log "no jump from $chain"; ok=1; }
    done
    "${IPT[@]}" -C "$CHAIN" -p tcp -d "$hub" --dport "$port" -j RETURN 2>/dev/null \
        || { log "$CHAIN does not allow $hub:$port"; ok=1; }
    [ $ok = 0 ] && log "in place: $CONFIG, $CHAIN (hub $hub:$port)"
    return $ok
}

do_remove() {
    local chain
    for chain in INPUT DOCKER-USER; do
        while "${IPT[@]}" -C "$chain" -i "$BRIDGE" -j "$CHAIN" 2>/dev/null; do
            "${IPT[@]}" -D "$chain" -i "$BRIDGE" -j "$CHAIN"
        done
    done
    "${IPT[@]}" -F "$CHAIN" 2>/dev/null && "${IPT[@]}" -X "$CHAIN"
    "${DOCKER[@]}" network rm "$CONFIG" >/dev/null 2>&1 || log "$CONFIG kept (still used, or absent)"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    node) do_node "$@" ;;
    swarm) do_swarm ;;
    check) do_check "$@" ;;
    remove) do_remove ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

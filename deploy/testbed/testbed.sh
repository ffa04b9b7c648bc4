#!/usr/bin/env bash
# Test bed for gpuspawner: an isolated Docker engine, a fake NVIDIA hook and
# locally built single-user images, on a Debian 12 machine with no GPU and no
# container registry. See deploy/testbed/README.md and /work/shared/TESTBED.md.
#
#   testbed.sh install   apt: docker.io, debootstrap, chromium, docker-compose, openssh-client, prometheus, postgresql; npm: configurable-http-proxy, axe-core
#   testbed.sh up        start the isolated test engine (if not running)
#   testbed.sh image [--jupyterhub-version X]
#                        build (or reuse) the test images on that engine
#   testbed.sh env       print export lines for eval
#   testbed.sh status    is it running, socket, images
#   testbed.sh down      stop the engine this script started, nothing else
#   testbed.sh all       install + up + image
#
# Environment:
#   GPUSPAWNER_TESTBED   state directory (default /var/lib/gpuspawner-testbed)
#   GPUSPAWNER_FAKE_GPU  1: always use the fake hook; 0: never; unset: only when
#                        the system has no real nvidia-container-runtime-hook
#   PYTHON               python whose jupyterhub version the image pins
#                        (default <repo>/.venv/bin/python)
#
# Every docker call here goes to the test engine's own socket, with a private
# client config, so no other engine, context or credential helper is touched.
set -euo pipefail
shopt -s inherit_errexit   # let failures inside $(...) stop the script too

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$HERE/../.." && pwd)"

DIR="${GPUSPAWNER_TESTBED:-/var/lib/gpuspawner-testbed}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
SOCK="$DIR/docker.sock"          # short on purpose: unix socket paths max ~107 bytes
PIDFILE="$DIR/docker.pid"
LOG="$DIR/dockerd.log"
HOOK_LOG="$DIR/hook.log"
# A clean, fixed PATH for dockerd and for looking up the real NVIDIA hook.
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }
# timed NAME CMD...: run a step and report how long it took. Not for use after
# `||`/`&&` or in `if` conditions: bash turns off `set -e` inside such calls.
timed() {
    local name=$1 t0=$EPOCHREALTIME
    shift
    "$@"
    log "$(awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" 'BEGIN { printf "%-8s %6.1f s", n, b - a }')"
}

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

# --- the docker client ---------------------------------------------------------
# Debian's docker.io client (/usr/bin/docker, 20.10) matches the engine. A newer
# client (/usr/local/bin/docker) also works when pinned to the engine's API.
if [ -x /usr/bin/docker ]; then
    DOCKER_BIN=/usr/bin/docker
    DOCKER_API=
else
    DOCKER_BIN="$(command -v docker || true)"
    DOCKER_API=1.41
fi

tdocker() {
    [ -n "$DOCKER_BIN" ] || die "no docker client found; run: $SELF install"
    mkdir -p "$DIR/client"
    # -H and DOCKER_HOST both point at the test socket; DOCKER_CONFIG is private so a
    # user's contexts/credential helpers (e.g. docker-credential-gcloud) never run;
    # DOCKER_BUILDKIT=0: the classic builder needs nothing but the engine.
    env -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
        DOCKER_HOST="unix://$SOCK" DOCKER_CONFIG="$DIR/client" DOCKER_BUILDKIT=0 \
        ${DOCKER_API:+DOCKER_API_VERSION=$DOCKER_API} \
        "$DOCKER_BIN" -H "unix://$SOCK" "$@"
}

# Serialise state-changing subcommands (two test sessions calling `image` at once).
take_lock() {
    mkdir -p "$DIR"
    exec 9>"$DIR/lock"
    if ! flock -n 9; then
        log "waiting for another testbed.sh on $DIR"
        flock 9
    fi
}

# --- install -------------------------------------------------------------------
pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

# Another apt-get/dpkg may be running (e.g. started by hand in the background):
# wait for it instead of fighting over the dpkg lock.
wait_for_apt() {
    local waited=0 pids
    while pids="$(pgrep -x 'apt|apt-get|dpkg|unattended-upgr' | tr '\n' ' ')" && [ -n "$pids" ]; do
        [ $waited = 0 ] && log "waiting for running apt/dpkg (pids $pids)"
        sleep 2
        waited=$((waited + 2))
        [ $waited -lt 1200 ] || die "apt/dpkg still running after 20 min (pids $pids)"
    done
}

do_install() {
    need_root install
    local missing=() p
    # chromium: the browser tests drive Debian's build (no browser download is possible here);
    # docker-compose: the deploy test runs deploy/hub/compose.yaml with it;
    # iproute2, iptables, util-linux: the Swarm test bed's namespaces, bridge and nsenter;
    # btrfs-progs: the disk quota test's loop filesystems (this kernel has btrfs qgroups, no XFS/ext4 quotas);
    # openssh-client: ssh, scp, sftp and ssh-keygen against the SSH gateway;
    # prometheus: the Grafana dashboard's queries are evaluated by a real Prometheus on loopback;
    # postgresql: the usage store's tests run on a real PostgreSQL too (tests/databases.py)
    for p in docker.io debootstrap chromium docker-registry docker-compose iproute2 iptables util-linux btrfs-progs openssh-client prometheus postgresql; do pkg_installed "$p" || missing+=("$p"); done
    command -v npm >/dev/null || missing+=(nodejs npm)
    if [ ${#missing[@]} -gt 0 ]; then
        wait_for_apt
        # The other apt run may have installed them meanwhile: look again.
        local still=()
        for p in "${missing[@]}"; do pkg_installed "$p" || still+=("$p"); done
        if [ ${#still[@]} -gt 0 ]; then
            log "apt-get install ${still[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get -o DPkg::Lock::Timeout=600 update -q >&2
            apt-get -o DPkg::Lock::Timeout=600 install -y -q "${still[@]}" >&2
        fi
    fi
    [ -x /usr/sbin/dockerd ] || die "docker.io is installed but /usr/sbin/dockerd is missing"
    if ! configurable-http-proxy --version >/dev/null 2>&1; then
        log "npm install -g configurable-http-proxy"
        npm install -g configurable-http-proxy >&2
        configurable-http-proxy --version >/dev/null || die "configurable-http-proxy still not working"
    fi
    # axe-core: the browser tests run it in every page of the services (accessibility)
    if [ ! -s "$DIR/axe/node_modules/axe-core/axe.min.js" ]; then
        log "npm install axe-core (into $DIR/axe)"
        mkdir -p "$DIR/axe"
        npm install --prefix "$DIR/axe" --no-audit --no-fund "axe-core@>=4.10" >&2
    fi
    log "installed: docker.io $(dpkg-query -W -f='${Version}' docker.io)," \
        "debootstrap $(dpkg-query -W -f='${Version}' debootstrap)," \
        "configurable-http-proxy $(configurable-http-proxy --version)"
}

# --- up / down -----------------------------------------------------------------
# The pid of the dockerd this script started, if it still runs. Checked against
# the process's own command line so a recycled pid is never mistaken for ours.
our_pid() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$(cat "$PIDFILE")"
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "--pidfile=$PIDFILE" || return 1
    echo "$pid"
}

engine_answers() { tdocker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Decide whether the test engine gets the fake hook (see the file header).
gpu_mode() {
    case "${GPUSPAWNER_FAKE_GPU:-}" in
        1) echo fake ;;
        0) if PATH="$SYS_PATH" command -v nvidia-container-runtime-hook >/dev/null; then echo real; else echo none; fi ;;
        *) if PATH="$SYS_PATH" command -v nvidia-container-runtime-hook >/dev/null; then echo real; else echo fake; fi ;;
    esac
}

do_up() {
    need_root up
    local pid mode path t log_start
    if pid="$(our_pid)"; then
        engine_answers || die "dockerd (pid $pid) runs but $SOCK does not answer; see $LOG"
        log "engine already running (pid $pid, $SOCK, gpu: $(cat "$DIR/gpu" 2>/dev/null || echo '?'))"
        # A newer double reaches the running engine too (runc runs the file afresh for
        # each container): replaced whole, never half-written under a starting container.
        if [ "$(cat "$DIR/gpu" 2>/dev/null || true)" = fake ] &&
            ! cmp -s "$HERE/fake-nvidia/nvidia-container-runtime-hook" "$DIR/fake-nvidia/nvidia-container-runtime-hook"; then
            install -m 0755 "$HERE/fake-nvidia/nvidia-container-runtime-hook" "$DIR/fake-nvidia/.hook.new"
            mv -f "$DIR/fake-nvidia/.hook.new" "$DIR/fake-nvidia/nvidia-container-runtime-hook"
            log "hook double updated in $DIR/fake-nvidia"
        fi
        return 0
    fi
    [ -x /usr/sbin/dockerd ] || die "no /usr/sbin/dockerd; run: $SELF install"
    # Something else answering on our socket would be an engine we did not start.
    if [ -S "$SOCK" ] && engine_answers; then
        die "$SOCK answers but its dockerd is not the one in $PIDFILE; refusing to touch it"
    fi
    rm -f "$PIDFILE" "$SOCK"
    mkdir -p "$DIR/data" "$DIR/exec" "$DIR/client"
    # A config file of our own: /etc/docker/daemon.json (hosts, registries, ...)
    # belongs to the system's engine and must not leak into the test engine.
    [ -f "$DIR/daemon.json" ] || printf '{}\n' >"$DIR/daemon.json"

    mode="$(gpu_mode)"
    path="$SYS_PATH"
    if [ "$mode" = fake ]; then
        # Copy the double next to the engine: the running engine keeps the absolute
        # hook path, so it must not depend on a working tree that may change.
        install -D -m 0755 "$HERE/fake-nvidia/nvidia-container-runtime-hook" \
            "$DIR/fake-nvidia/nvidia-container-runtime-hook"
        path="$DIR/fake-nvidia:$SYS_PATH"
    fi
    echo "$mode" >"$DIR/gpu"

    log "starting dockerd (gpu: $mode, log $LOG)"
    # On failure show only what this start wrote, not older runs' log.
    log_start=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
    echo "=== $(date -Is) testbed.sh up (gpu: $mode)" >>"$LOG"
    # env -i: dockerd (and the hooks it runs, which get its environment) see only
    # what is set here. setsid + nohup + </dev/null: it outlives this script and
    # the caller's process group; 9>&-: it must not inherit (and hold forever) our
    # lock. Separate containerd namespaces and cgroup parent
    # keep it apart from a system engine even if it shares a system containerd.
    env -i PATH="$path" HOME=/root LANG=C.UTF-8 GPUSPAWNER_FAKE_HOOK_LOG="$HOOK_LOG" \
        setsid nohup /usr/sbin/dockerd \
        --config-file="$DIR/daemon.json" \
        --data-root="$DIR/data" \
        --exec-root="$DIR/exec" \
        --pidfile="$PIDFILE" \
        --host="unix://$SOCK" \
        --containerd-namespace=gpuspawner-testbed \
        --containerd-plugins-namespace=gpuspawner-testbed-plugins \
        --cgroup-parent=/gpuspawner-testbed \
        --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
        </dev/null >>"$LOG" 2>&1 9>&- &
    pid=$!
    disown "$pid" 2>/dev/null || true

    t=0
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -c +"$((log_start + 1))" "$LOG" | tail -n 30 >&2
            die "dockerd exited during start-up (log above, full log $LOG)"
        fi
        if [ $t -ge 120 ]; then   # 120 half-seconds = 60 s
            tail -c +"$((log_start + 1))" "$LOG" | tail -n 30 >&2
            die "dockerd (pid $pid) did not answer on $SOCK within 60 s (log above)"
        fi
        sleep 0.5
        t=$((t + 1))
    done
    log "engine up: pid $(cat "$PIDFILE"), $SOCK, server $(tdocker version --format '{{.Server.Version}}')"
}

do_down() {
    need_root down
    local pid
    if ! pid="$(our_pid)"; then
        log "engine not running (no live dockerd for $PIDFILE)"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid"
    # dockerd gives running containers 15 s, then stops its containerd.
    for _ in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || { log "stopped"; return 0; }
        sleep 0.5
    done
    die "dockerd pid $pid still running 60 s after SIGTERM; see $LOG"
}

# --- image -----------------------------------------------------------------------
# Everything between the two recipe markers (plus the jupyterhub version) is
# hashed into the image tag: edit the recipe and the next `image` builds a new tag.
# >>> image recipe
RECIPE_SUITE=bookworm                      # Debian 12: python 3.11, glibc 2.36
RECIPE_INCLUDE=python3,python3-venv,ca-certificates
RECIPE_PACKAGES=(jupyterlab)               # plus jupyterhub==<hub version>
# Wheels are fetched by the host's pip (the chroot has no registry config) for the
# chroot's interpreter, never built from source on the host. pip (23.x) does not
# widen `--platform manylinux_2_36` to older glibc tags, so list every tag that
# bookworm's glibc 2.36 can run.
RECIPE_PIP_TARGET=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311
                   --platform manylinux2014_x86_64)     # pip widens this one to 2010 and 1
for _v in $(seq 17 36); do RECIPE_PIP_TARGET+=(--platform "manylinux_2_${_v}_x86_64"); done
unset _v
RECIPE_PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian mirror from the machine's apt sources (deb822 first, then sources.list).
apt_mirror() {
    local m
    m="$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
    if [ -z "$m" ]; then
        m="$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' | grep -v -- '-security' | head -n1 || true)"
    fi
    [ -n "$m" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
    echo "$m"
}

# Cached debootstrap of the base system: $DIR/cache/rootfs-<key>.tar.
rootfs_tar() {
    local key tar tmp mirror
    key="$(printf '%s\n' "$RECIPE_SUITE" minbase "$RECIPE_INCLUDE" | sha256sum | cut -c1-12)"
    tar="$DIR/cache/rootfs-$key.tar"
    if [ ! -s "$tar" ]; then
        tmp="$DIR/build/debootstrap-$key"
        rm -rf --one-file-system "$tmp" "$tar.tmp"
        mkdir -p "$tmp" "$DIR/cache"
        mirror="$(apt_mirror)"
        log "debootstrap $RECIPE_SUITE from $mirror -> $tar"
        debootstrap --variant=minbase --include="$RECIPE_INCLUDE" \
            "$RECIPE_SUITE" "$tmp" "$mirror" >"$DIR/build/debootstrap.log" 2>&1 \
            || { tail -n 20 "$DIR/build/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
        tar -C "$tmp" --numeric-owner -cf "$tar.tmp" .
        mv "$tar.tmp" "$tar"
        rm -rf --one-file-system "$tmp"
    fi
    echo "$tar"
}

# Cached wheels for the requirement list: $DIR/cache/wheels-<key>/.
wheel_dir() {
    local reqs=$1 key wd
    key="$(printf '%s\n' "$reqs" "${RECIPE_PIP_TARGET[@]}" | sha256sum | cut -c1-12)"
    wd="$DIR/cache/wheels-$key"
    if [ ! -e "$wd/.complete" ]; then
        log "pip download -> $wd"
        mkdir -p "$wd"
        printf '%s\n' "$reqs" >"$wd/requirements.txt"
        # (The grep drops pip's noise about this machine's local file indexes.)
        python3 -m pip download --quiet --dest "$wd" "${RECIPE_PIP_TARGET[@]}" \
            -r "$wd/requirements.txt" 2>&1 \
            | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
        touch "$wd/.complete"
    fi
    echo "$wd"
}

# Build the base image NAME from scratch: rootfs + venv + jovyan, then docker import.
build_base() {
    local name=$1 reqs=$2 tar wd root
    tar="$(timed rootfs rootfs_tar)"
    wd="$(timed wheels wheel_dir "$reqs")"
    root="$DIR/build/rootfs"
    rm -rf --one-file-system "$root"
    mkdir -p "$root"
    tar -C "$root" --numeric-owner -xf "$tar"
    mkdir -p "$root/tmp/wheels"
    cp "$wd"/*.whl "$wd/requirements.txt" "$root/tmp/wheels/"
    # A clean environment: the host's PIP_* settings must not leak into the chroot.
    local -a chenv=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)
    log "venv + pip install in chroot"
    timed venv chroot_install "$root" "${chenv[@]}"
    log "docker import $name"
    timed import import_rootfs "$root" "$name"
    rm -rf --one-file-system "$root"
}

chroot_install() {
    local root=$1
    shift
    chroot "$root" "$@" python3 -m venv /opt/venv
    chroot "$root" "$@" /opt/venv/bin/pip install --quiet --no-cache-dir \
        --disable-pip-version-check --no-index --find-links /tmp/wheels \
        -r /tmp/wheels/requirements.txt >&2
    chroot "$root" "$@" useradd -m -u 1000 -s /bin/bash jovyan
    rm -rf "$root/tmp/wheels"
}

# Import the tree as an image; /dev, /proc and /sys are the engine's business.
import_rootfs() {
    local root=$1 name=$2
    tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . \
        | tdocker import \
            --change "ENV PATH=$RECIPE_PATH" \
            --change 'ENV HOME=/home/jovyan' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'ENV SHELL=/bin/bash' \
            --change 'USER jovyan' \
            --change 'WORKDIR /home/jovyan' \
            --change 'CMD ["jupyterhub-singleuser"]' \
            - "$name" >/dev/null
}

# Derived images: built FROM the local base image, so no registry is needed.
build_cuda() {
    # What nvidia/cuda base images set: they ask for all GPUs unless told otherwise,
    # which is exactly what the spawner must override.
    tdocker build -q -t "$2" - >/dev/null <<EOF
FROM $1
ENV NVIDIA_VISIBLE_DEVICES=all
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENV CUDA_VERSION=12.4.1
EOF
}
build_crash() {
    # The server dies at once with status 1. ENTRYPOINT, so it crashes whatever
    # command the spawner passes (CMD only supplies ignored arguments).
    tdocker build -q -t "$2" - >/dev/null <<EOF
FROM $1
ENTRYPOINT ["/bin/sh", "-c", "echo 'gpuspawner-lab-crash: exiting with status 1 on purpose' >&2; exit 1", "gpuspawner-lab-crash"]
CMD ["jupyterhub-singleuser"]
EOF
}
# <<< image recipe

# The SSH gateway's test image: the base with OpenSSH's sftp-server (scp and sftp need it),
# from Debian's mirror (the build's RUN step on the host's network). Outside the recipe
# above: its tag is the base's and a hash of this step, so adding it rebuilt nothing else.
SSH_RECIPE='RUN apt-get update -q && apt-get install -y -q --no-install-recommends openssh-sftp-server && rm -rf /var/lib/apt/lists/*'
build_ssh() {
    tdocker build -q --network host -t "$2" - >/dev/null <<EOF
FROM $1
USER root
$SSH_RECIPE
USER jovyan
EOF
}

hub_version() {
    local py="${PYTHON:-$REPO/.venv/bin/python}" v
    [ -x "$py" ] || die "no python at $py (set PYTHON or pass --jupyterhub-version X)"
    v="$("$py" -c 'import jupyterhub; print(jupyterhub.__version__)' 2>/dev/null)" \
        || die "$py cannot import jupyterhub (install it, set PYTHON, or pass --jupyterhub-version X)"
    echo "$v"
}

image_exists() { tdocker image inspect "$1" >/dev/null 2>&1; }

do_image() {
    need_root image
    local version=${1:-} hash tag base cuda crash reqs
    [ -n "$version" ] || version="$(hub_version)"
    [[ "$version" =~ ^[A-Za-z0-9._-]+$ ]] || die "jupyterhub version '$version' cannot go into an image tag"
    reqs="$(printf '%s\n' "jupyterhub==$version" "${RECIPE_PACKAGES[@]}")"
    hash="$( { sed -n '/^# >>> image recipe/,/^# <<< image recipe/p' "$SELF"; printf '%s\n' "$reqs"; } \
        | sha256sum | cut -c1-12)"
    tag="jh$version-$hash"
    base="gpuspawner-lab:$tag"
    cuda="gpuspawner-lab-cuda:$tag"
    crash="gpuspawner-lab-crash:$tag"
    ssh="gpuspawner-lab-ssh:$tag-$(printf '%s\n' "$SSH_RECIPE" | sha256sum | cut -c1-8)"

    if image_exists "$base"; then
        log "cached: $base"
    else
        timed build build_base "$base" "$reqs"
    fi
    if ! image_exists "$cuda"; then timed cuda build_cuda "$base" "$cuda"; fi
    if ! image_exists "$crash"; then timed crash build_crash "$base" "$crash"; fi
    if ! image_exists "$ssh"; then timed ssh build_ssh "$base" "$ssh"; fi
    echo "$base" >"$DIR/image"
    echo "$cuda" >"$DIR/image-cuda"
    echo "$crash" >"$DIR/image-crash"
    echo "$ssh" >"$DIR/image-ssh"
    echo "$base"
}

# --- env / status ----------------------------------------------------------------
do_env() {
    our_pid >/dev/null || log "warning: the test engine is not running (run: $SELF up)"
    printf 'export DOCKER_HOST=%q\n' "unix://$SOCK"
    printf 'export GPUSPAWNER_TESTBED=%q\n' "$DIR"
    [ -s "$DIR/image" ] && printf 'export GPUSPAWNER_IMAGE=%q\n' "$(cat "$DIR/image")"
    [ -s "$DIR/image-cuda" ] && printf 'export GPUSPAWNER_IMAGE_CUDA=%q\n' "$(cat "$DIR/image-cuda")"
    [ -s "$DIR/image-crash" ] && printf 'export GPUSPAWNER_IMAGE_CRASH=%q\n' "$(cat "$DIR/image-crash")"
    [ -s "$DIR/image-ssh" ] && printf 'export GPUSPAWNER_IMAGE_SSH=%q\n' "$(cat "$DIR/image-ssh")"
    [ "$(cat "$DIR/gpu" 2>/dev/null || true)" = fake ] && printf 'export GPUSPAWNER_FAKE_HOOK_LOG=%q\n' "$HOOK_LOG"
    return 0
}

do_status() {
    local pid f name state
    if pid="$(our_pid)"; then
        echo "engine:  running, pid $pid, server $(tdocker version --format '{{.Server.Version}}' 2>/dev/null || echo 'NOT ANSWERING')"
    else
        echo "engine:  not running"
    fi
    echo "socket:  unix://$SOCK"
    echo "dir:     $DIR"
    echo "gpu:     $(cat "$DIR/gpu" 2>/dev/null || echo unknown)$([ "$(cat "$DIR/gpu" 2>/dev/null || true)" = fake ] && echo " (hook log $HOOK_LOG)")"
    for f in image image-cuda image-crash image-ssh; do
        name="$(cat "$DIR/$f" 2>/dev/null || true)"
        if [ -z "$name" ]; then state="(not built)"
        elif [ -z "${pid:-}" ]; then state="(engine not running)"
        elif image_exists "$name"; then state="(present)"
        else state="(not on the engine)"; fi
        printf '%-13s %s %s\n' "$f:" "$name" "$state"
    done
}

# --- main --------------------------------------------------------------------------
usage() { sed -n '2,24p' "$SELF" | sed 's/^# \{0,1\}//'; }

main() {
    local cmd=${1:-} version=
    [ $# -gt 0 ] && shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --jupyterhub-version) [ $# -ge 2 ] || die "--jupyterhub-version needs a value"; version=$2; shift 2 ;;
            --jupyterhub-version=*) version=${1#*=}; shift ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    case "$cmd" in
        install) timed install do_install ;;
        up)      take_lock; timed up do_up ;;
        image)   take_lock; timed up do_up; timed image do_image "$version" ;;
        all)     timed install do_install; take_lock; timed up do_up; timed image do_image "$version" ;;
        down)    take_lock; timed down do_down ;;
        env)     do_env ;;
        status)  do_status ;;
        -h|--help|help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"

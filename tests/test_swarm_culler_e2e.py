"""GPU culling on a real Docker Swarm: one node-local culler, on one node, judging that node's servers.

The Swarm test bed of test_swarm_e2e.py (three engines in network namespaces of
their own), a real hub and proxy. The culler is what a lab runs on each GPU node:
an external service of the hub with its own token and the four scopes, started
here in the node's network namespace, talking to the hub over the bridge, reading
the node's engine for its task containers (the units Swarm assigned are in their
environment) and GPU usage from a file in NVML's terms (``--usage-file``: real
host pids, placed in containers through their real cgroups).

Three servers: two on one node (idle, and busy with its own process), one on
another node (idle too, but not this culler's to judge). The idle one on the
culler's node is stopped through the hub's REST API, told why on its next spawn
page (the culler writes the hub's stops file, as it would on a shared filesystem),
and its unit is freed; the two others run on.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter

import pytest

from .realhub import RealHub, started, wait_for
from .test_swarm_e2e import DIR, E2E_LABEL, HUB_IP, RUN, node_client, spawn_at_once, swarm, task, user, where

pytestmark = [pytest.mark.docker, pytest.mark.hub]

__all__ = ["swarm"]  # the Swarm test bed fixture, shared with test_swarm_e2e.py

IDLE_TIMEOUT = 3  # seconds
NAMES = ("oda", "pia", "rex")  # this module's students (test_swarm_e2e.py's have other names)


@pytest.fixture(scope="module")
def hub(swarm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("swarmcull")
    token = secrets.token_hex(16)
    small = {"image": swarm, "mem_limit": "512M"}
    config = f"""
    c.JupyterHub.spawner_class = "gpuspawner.swarm.SwarmGPUSpawner"
    c.JupyterHub.hub_ip = {HUB_IP!r}
    c.SwarmGPUSpawner.client_kwargs = {{"base_url": "unix://{DIR}/n1/docker.sock"}}
    c.SwarmGPUSpawner.network_name = "host"  # the node's own network (test_swarm_e2e.py: the lab network)
    c.SwarmGPUSpawner.extra_create_kwargs = {{"labels": {{{E2E_LABEL!r}: {RUN!r}}}}}
    c.SwarmGPUSpawner.placement = "pack"  # two servers on one node, the third on another
    c.SwarmGPUSpawner.profiles = [
        dict(slug="gpu", display_name="One GPU", gpus=1, gpu_idle_timeout={IDLE_TIMEOUT}, **{small!r}),
    ]
    c.SwarmGPUSpawner.stops_file = {str(workdir / "stops.jsonl")!r}
    c.SwarmGPUSpawner.nodes_refresh = 0.5
    c.Spawner.poll_interval = 2
    # The node's culler: an external service (not started by the hub), least privilege.
    from gpuspawner import services
    services.add_node_culler(c, "gpu-culler-node", {token!r})
    """
    with started(RealHub(workdir, config)) as h:
        yield h, token, workdir


def host_pid(node: int, name: str) -> int:
    """The host pid of PID 1 of the server's container, on its node's engine."""
    client = node_client(node)
    (found,) = client.containers(filters={"label": [f"gpuspawner.user={name}", "gpuspawner.server="]})
    return client.inspect_container(found["Id"])["State"]["Pid"]


def test_a_node_local_culler_stops_an_idle_server_on_its_node_only(hub):
    h, token, workdir = hub
    started = time.monotonic()
    spawn_at_once(h, list(NAMES), "gpu")
    placed = {user(n): where(user(n)) for n in NAMES}
    count = Counter(host for host, _ in placed.values())
    (node_name,) = [host for host, k in count.items() if k == 2]
    node = int(node_name.rsplit("-", 1)[1])
    idle, busy = sorted(name for name, (host, _) in placed.items() if host == node_name)
    (away,) = [name for name, (host, _) in placed.items() if host != node_name]
    print(f"three GPU servers on Swarm: {time.monotonic() - started:.1f} s ({idle}, {busy} on {node_name})")

    # What NVML would say: the busy server's own process runs kernels; the other two units are idle
    # (the away unit is listed too: it must still not be judged by this node's culler).
    usage = workdir / "usage.json"
    usage.write_text(
        json.dumps(
            {
                placed[idle][1][0]: {"utilization": 0, "processes": []},
                placed[busy][1][0]: {"utilization": 85, "processes": [host_pid(node, busy)]},
                placed[away][1][0]: {"utilization": 0, "processes": []},
            }
        )
    )
    idle_service = task(idle)["ServiceID"]
    log = open(workdir / "culler.log", "ab")
    node_dir = workdir / "node"  # the culler's working directory on its node: no hub config there
    node_dir.mkdir()
    culler = subprocess.Popen(
        [
            "nsenter",
            f"--net=/var/run/netns/gpusw-n{node}",
            sys.executable,
            "-m",
            "gpuspawner.culler",
            "--node-local",
            f"--url=http://{HUB_IP}:{h.hub_port}/hub/api",
            f"--usage-file={usage}",
            f"--stops-file={workdir / 'stops.jsonl'}",
            "--cull-every=1",
        ],
        cwd=node_dir,
        env={**os.environ, "DOCKER_HOST": f"unix://{DIR}/n{node}/docker.sock", "JUPYTERHUB_API_TOKEN": token},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    culler_started = time.monotonic()

    def culler_log() -> str:
        return (workdir / "culler.log").read_text()

    def rounds() -> int:
        """The culler's rounds so far: each lists the hub's users once, which the hub logs; fails if it exited."""
        assert culler.poll() is None, culler_log()
        hub_log = (workdir / "jupyterhub.log").read_text(errors="replace").splitlines()
        return sum(1 for line in hub_log if "GET /hub/api/users" in line and "(gpu-culler-node@" in line)

    def culled() -> bool:
        rounds()  # the culler still runs
        return h.server_model(idle) is None

    try:
        wait_for(
            culled,
            IDLE_TIMEOUT + 30,
            f"the idle server {idle} culled",
            every=0.5,
            details=lambda: culler_log() + h.log_tail(),
        )
        print(f"idle server culled {time.monotonic() - culler_started:.1f} s after the culler started")
        # Rounds that span two idle timeouts more: the busy server and the other node's idle server run on.
        after = rounds()
        wait_for(
            lambda: rounds() >= after + 2 * IDLE_TIMEOUT + 1,
            2 * IDLE_TIMEOUT + 60,
            f"{2 * IDLE_TIMEOUT + 1} more rounds of the culler",
            every=0.5,
            details=culler_log,
        )
        assert culler.poll() is None, culler_log()
    finally:
        culler.terminate()
        culler.wait(10)
        log.close()
    culled_log = (workdir / "culler.log").read_text()
    assert h.server_model(busy)["ready"] and h.server_model(away)["ready"], culled_log
    assert busy not in culled_log and away not in culled_log, culled_log

    # Recorded under the id the hub's spawner knows the server by: its service.
    (record,) = map(json.loads, (workdir / "stops.jsonl").read_text().splitlines())
    assert (record["user"], record["reason"], record["container"]) == (idle, "gpu_idle", idle_service)
    # The hub freed the unit, and Swarm has no task for it any more.
    assert f"Released GPUs {placed[idle][1][0]} of {idle}/" in h.log_tail(300)
    api = node_client(1)
    assert not api.services(filters={"label": f"gpuspawner.user={idle}"}) or not [
        t for t in api.tasks(filters={"service": idle_service, "desired-state": "running"})
    ]
    # The student is told why on the next spawn page.
    page = h.login(idle).get(f"{h.url}/hub/spawn", timeout=30).text
    assert f"Your last server was stopped after {IDLE_TIMEOUT} seconds without GPU use" in page

"""gpuspawner on a real Docker Swarm of three engines, each in a network namespace
of its own (deploy/swarm/testbed-swarm.sh), with a real hub and proxy.

Each node advertises two test GPUs as Swarm generic resources; Swarm puts the
id it assigns in the container's PID-1 environment (DOCKER_RESOURCE_NVIDIA-GPU),
as it does on a GPU host where the toolkit's swarm-resource setting reads it.
The hub listens on the bridge (10.231.0.1); each server runs in a network
namespace of its own on the lab network (the default), published on its node.
One hub, one scenario in steps, in order: spread, what a server can reach,
refusals and quotas across nodes, a drained node, a hub restart, a home kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests

from gpuspawner.dashboard.sources import Sources
from gpuspawner.gpus import Inventory, Policy

from .realhub import REPO, RealHub, read_testbed, require_tools, started

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
SCRIPT = REPO / "deploy" / "swarm" / "testbed-swarm.sh"
DIR = Path(os.environ.get("GPUSPAWNER_SWARM_TESTBED", "/var/lib/gpuspawner-testbed-swarm"))
HUB_IP = "10.231.0.1"
E2E_LABEL = "gpuspawner-e2e-swarm"
LAB_NETWORK = "gpuspawner-lab"  # the default network_name; `testbed-swarm.sh isolate` makes it (lab-network.sh)


def gpu(node: int, i: int) -> str:
    return f"GPU-5a4d0000-0000-4000-8000-0000000{node:02d}{i:03d}"


def mig(i: int) -> str:  # node 3 also has a GPU in MIG mode: two 1g.10gb instances
    return f"MIG-5a4d0000-0000-4000-8000-0000000{3:02d}{i:03d}"


def user(name: str) -> str:
    return f"{name}-{RUN}"


def node_client(i: int) -> docker.APIClient:
    return docker.APIClient(base_url=f"unix://{DIR}/n{i}/docker.sock", version="auto")


def manager() -> docker.APIClient:
    return node_client(1)


def node_names() -> dict[str, str]:
    """node id -> hostname."""
    return {n["ID"]: n["Description"]["Hostname"] for n in manager().nodes()}


def node_id(hostname: str) -> str:
    return next(i for i, h in node_names().items() if h == hostname)


def task(name: str, server: str = "") -> dict:
    """The running task of one user's server."""
    api = manager()
    services = api.services(filters={"label": [f"gpuspawner.user={name}", f"gpuspawner.server={server}"]})
    assert len(services) == 1, f"expected one service for {name}/{server}, found {len(services)}"
    tasks = api.tasks(filters={"service": services[0]["ID"], "desired-state": "running"})
    assert len(tasks) == 1 and tasks[0]["Status"]["State"] == "running", tasks
    return tasks[0]


def where(name: str, server: str = "") -> tuple[str, tuple[str, ...]]:
    """(hostname, units Swarm assigned) of one user's server."""
    t = task(name, server)
    units = tuple(r["NamedResourceSpec"]["Value"] for r in t.get("GenericResources") or ())
    return node_names()[t["NodeID"]], units


def container_on_node(name: str, server: str = "") -> tuple[docker.APIClient, str]:
    hostname, _ = where(name, server)
    client = node_client(int(hostname.rsplit("-", 1)[1]))
    # The running task's container (a stopped server's may still be on its way out).
    found = client.containers(filters={"label": f"com.docker.swarm.task.id={task(name, server)['ID']}"})
    assert len(found) == 1, found
    return client, found[0]["Id"]


def run_in(name: str, cmd: list[str], server: str = "") -> str:
    client, cid = container_on_node(name, server)
    exec_id = client.exec_create(cid, cmd)["Id"]
    out = client.exec_start(exec_id).decode()
    assert client.exec_inspect(exec_id)["ExitCode"] == 0, out
    return out


def pid1_env(name: str, server: str = "") -> dict[str, str]:
    out = run_in(name, ["cat", "/proc/1/environ"], server)
    return dict(e.partition("=")[::2] for e in out.split("\0") if e)


# Run in a server as its own user: try each (host, port) at once; "open", or why not ("ECONNREFUSED", ...).
PROBE = """
import concurrent.futures, errno, json, socket, sys
def connect(target):
    try:
        socket.create_connection(tuple(target), timeout=3).close()
        return "open"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__)
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(connect, targets))))
"""


def probe(name: str, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    out = run_in(name, ["python3", "-c", PROBE, json.dumps(targets)])
    return dict(zip(targets, json.loads(out), strict=True))


def published(name: str) -> int:
    """The port of the node where Swarm published ``name``'s server."""
    (service,) = manager().services(filters={"label": f"gpuspawner.user={name}"})
    return service["Endpoint"]["Ports"][0]["PublishedPort"]


def lab_address(name: str) -> str:
    client, cid = container_on_node(name)
    return client.inspect_container(cid)["NetworkSettings"]["Networks"][LAB_NETWORK]["IPAddress"]


def set_availability(hostname: str, availability: str) -> None:
    api = manager()
    n = api.inspect_node(node_id(hostname))
    spec = {**n["Spec"], "Availability": availability}
    api.update_node(n["ID"], n["Version"]["Index"], spec)


def cleanup_swarm() -> None:
    """This run's services, home volumes and home records; every node active again."""
    api = manager()
    for s in api.services(filters={"label": E2E_LABEL}):
        api.remove_service(s["ID"])
    for n in api.nodes():
        if n["Spec"].get("Availability") != "active":
            api.update_node(n["ID"], n["Version"]["Index"], {**n["Spec"], "Availability": "active"})
    for secret in api.secrets(filters={"label": E2E_LABEL}):  # internal_ssl secrets a failed test left
        api.remove_secret(secret["ID"])
    for config in api.configs(filters={"label": "gpuspawner.home"}):
        if config["Spec"]["Labels"]["gpuspawner.home"].endswith(RUN):
            api.remove_config(config["ID"])
    deadline = time.monotonic() + 30
    for i in (1, 2, 3):
        client = node_client(i)
        while client.containers(all=True, filters={"label": "gpuspawner.user"}) and time.monotonic() < deadline:
            time.sleep(0.5)
        for v in client.volumes().get("Volumes") or []:
            if v["Name"].startswith("jupyterhub-user-") and v["Name"].endswith(RUN):
                client.remove_volume(v["Name"], force=True)


@pytest.fixture(scope="module")
def swarm():
    require_tools()
    read_testbed("image")  # the single-engine test bed's image is what every node loads
    started = time.monotonic()
    subprocess.run(["bash", str(SCRIPT), "up"], check=True)
    print(f"swarm test bed up in {time.monotonic() - started:.1f} s")
    image = (DIR / "image").read_text().strip()
    yield image
    cleanup_swarm()


def resource_env_image(base: str) -> str:
    """An image whose own environment names a GPU, on the manager (where the hub inspects images)."""
    tag = "gpuspawner-lab-resource-env:" + base.rsplit(":", 1)[1]
    api = manager()
    if not api.images(name=tag):
        dockerfile = f"FROM {base}\nENV DOCKER_RESOURCE_NVIDIA-GPU={gpu(1, 0)}\n".encode()
        for event in api.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, decode=True):
            assert "error" not in event, event
    return tag


@pytest.fixture(scope="module")
def hub(swarm, tmp_path_factory):
    small = {"image": swarm, "mem_limit": "512M"}  # no CPU limit: start-up is CPU-bound on 2 cores
    named_gpu = {**small, "image": resource_env_image(swarm)}
    gpus = [
        {"index": i, "uuid": gpu(n, i), "name": "NVIDIA L4", "memory": "24G", "node": f"gpu-node-{n}"}
        for n in (1, 2, 3)
        for i in (0, 1)
    ]
    gpus += [
        {
            "index": 2,
            "uuid": mig(i),
            "name": "NVIDIA A100",
            "memory": "10G",
            "mig_profile": "1g.10gb",
            "parent_uuid": "GPU-5a4d0000-0000-4000-8000-a100a100a100",
            "mig_index": i,
            "node": "gpu-node-3",
        }
        for i in (0, 1)
    ]
    config = f"""
    c.JupyterHub.spawner_class = "gpuspawner.swarm.SwarmGPUSpawner"
    c.JupyterHub.hub_ip = {HUB_IP!r}  # the bridge: servers in the nodes' namespaces call the hub here
    c.JupyterHub.allow_named_servers = True
    # Mutual TLS between hub, proxy and servers; each server's key and certificates are Swarm secrets.
    c.JupyterHub.internal_ssl = True
    c.JupyterHub.trusted_alt_names = ["IP:{HUB_IP}"]  # where the servers call the hub
    c.SwarmGPUSpawner.client_kwargs = {{"base_url": "unix://{DIR}/n1/docker.sock"}}
    c.SwarmGPUSpawner.extra_create_kwargs = {{"labels": {{{E2E_LABEL!r}: {RUN!r}}}}}
    c.SwarmGPUSpawner.gpus = {gpus!r}
    c.SwarmGPUSpawner.placement = "spread"
    c.SwarmGPUSpawner.group_gpu_quotas = {{"ml101": 2}}
    c.JupyterHub.load_groups = {{"ml101": {{"users": [{user("gia")!r}, {user("hal")!r}, {user("ivy")!r}]}}}}
    c.SwarmGPUSpawner.profiles = [
        dict(slug="cpu", display_name="CPU only", **{small!r}),
        dict(slug="gpu", display_name="One L4", gpus=1, **{small!r}),
        dict(slug="gpu2", display_name="Two L4", gpus=2, **{small!r}),
        dict(slug="mig", display_name="A100 slice", gpus=1, mig_profile="1g.10gb", **{small!r}),
        dict(slug="named-gpu", display_name="Image naming a GPU", gpus=1, **{named_gpu!r}),
    ]
    c.SwarmGPUSpawner.nodes_refresh = 0.5
    c.Spawner.poll_interval = 2
    """
    h = RealHub(tmp_path_factory.mktemp("swarmhub"), config)
    h.config += f'c.ConfigurableHTTPProxy.api_url = "https://127.0.0.1:{h.proxy_api_port}"  # TLS too\n    '
    # The lab network on every node, its rules leaving servers only this hub's API.
    subprocess.run(["bash", str(SCRIPT), "isolate", str(h.hub_port)], check=True)
    with started(h) as h:
        yield h


def spawn_at_once(hub: RealHub, names: list[str], profile: str, **profiles: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        for name in names:
            hub.ensure_user(user(name))
        futures = [pool.submit(hub.start_server, user(name), profiles.get(name, profile)) for name in names]
        for f in futures:
            assert f.result().status_code in (201, 202), f.result().text
    for name in names:
        hub.wait_ready(user(name))


def refusal(response) -> str:
    return response.json().get("message", response.text)


def test_1_spawns_spread_over_the_nodes_with_distinct_units(hub: RealHub):
    started = time.monotonic()
    spawn_at_once(hub, ["ann", "bob", "cem"], "gpu")  # each decision is made under the hub's lock
    print(f"three GPU spawns at once: {time.monotonic() - started:.1f} s")
    placed = {name: where(user(name)) for name in ("ann", "bob", "cem")}
    assert sorted(host for host, _ in placed.values()) == ["gpu-node-1", "gpu-node-2", "gpu-node-3"], placed
    units = [u for _, ids in placed.values() for u in ids]
    assert len(units) == 3 and len(set(units)) == 3, placed
    for name, (host, ids) in placed.items():
        assert ids[0].startswith(gpu(int(host[-1]), 0)[:-3]), (name, host, ids)  # a unit of that node
        env = pid1_env(user(name))
        assert env["DOCKER_RESOURCE_NVIDIA-GPU"] == ids[0]
        assert env["DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB"] == ""  # a kind it was not given names nothing
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void"  # Swarm's variable carries the unit, not ours
    # The dashboard reads the ledger from Swarm: every node's units and who holds them.
    sources = Sources(Inventory(units=(), source="swarm"), Policy(), manager, None, "", nvml=False)
    view = asyncio.run(sources.view())
    assert view.docker_error == "" and view.totals.units == 8 and view.totals.used == 3, view
    held = {u.holders[0].user: u.label for u in view.units if u.holders}
    for name, (host, _) in placed.items():
        assert held[user(name)].startswith(f"{host}: GPU "), held
    # The home follows the pin: ann's home is on ann's node.
    run_in(user("ann"), ["sh", "-c", "echo kept > /home/jovyan/work.txt"])


def test_1b_a_server_on_the_lab_network_reaches_only_the_hubs_api(hub: RealHub):
    """Each server in a namespace of its own: it reaches the hub's API and nothing else."""
    started = time.monotonic()
    addr = {h: f"10.231.0.1{h[-1]}" for h in ("gpu-node-1", "gpu-node-2", "gpu-node-3")}
    ann_node, bob_node = where(user("ann"))[0], where(user("bob"))[0]
    # ann opens a listener of her own, in her namespace.
    client, cid = container_on_node(user("ann"))
    client.exec_start(client.exec_create(cid, ["python3", "-m", "http.server", "9999"])["Id"], detach=True)
    must_not = [
        (HUB_IP, hub.proxy_port),  # the proxy, the proxy's API: on the hub host's loopback
        (HUB_IP, hub.proxy_api_port),
        (HUB_IP, 22),  # any other port of the hub's host
        (addr[ann_node], 2377),  # her node's own services (Swarm's port)
        (addr[ann_node], 7946),
        (addr[ann_node], published(user("ann"))),  # a node's published ports: other servers' doors
        (addr[bob_node], published(user("bob"))),  # bob's server, by its node's address and port
        (lab_address(user("bob")), 8888),  # bob's server, by its own address (another node's bridge)
        (f"10.232.{ann_node[-1]}.1", published(user("ann"))),  # her bridge's gateway: the node again
    ]
    seen = probe(user("ann"), [(HUB_IP, hub.hub_port), *must_not])
    assert seen[(HUB_IP, hub.hub_port)] == "open", seen  # the hub's API answers (and she is ready: OAuth, activity)
    # (refused, timed out in 3 s, or no route: EHOSTUNREACH)
    answered = {t: seen[t] for t in must_not if seen[t] == "open"}
    assert not answered, f"answered from ann's server: {answered}"
    # Her listener is on no address of her node (tried from the node's own namespace), nor reachable from bob's server.
    time.sleep(0.5)
    on_node = [("127.0.0.1", 9999), (addr[ann_node], 9999), (f"10.232.{ann_node[-1]}.1", 9999)]
    node_ns = f"--net=/var/run/netns/gpusw-n{ann_node[-1]}"
    out = subprocess.run(["nsenter", node_ns, sys.executable, "-c", PROBE, json.dumps(on_node)], capture_output=True)
    assert "open" not in json.loads(out.stdout), out
    theirs = probe(user("bob"), [(addr[ann_node], 9999), (lab_address(user("ann")), 9999)])
    assert "open" not in theirs.values(), theirs
    assert probe(user("ann"), [("127.0.0.1", 9999)]) == {("127.0.0.1", 9999): "open"}  # it does listen
    # The hub and the proxy reach her server (through the proxy, to her node's published port) over mutual
    # TLS: without a certificate of the lab's CAs, her server answers nothing, in plain HTTP or in TLS.
    assert hub.server_model(user("ann"))["ready"]
    door = (addr[ann_node], published(user("ann")))
    with pytest.raises(requests.RequestException):
        requests.get(f"http://{door[0]}:{door[1]}/", timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        with tls.wrap_socket(socket.create_connection(door, timeout=5)) as s:
            s.sendall(b"GET /hub/api HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b"", "a server answered a client without a certificate"
    # Her key and certificates reached her node as Swarm secrets, and only as those.
    mine = manager().secrets(filters={"label": f"gpuspawner.user={user('ann')}"})
    assert sorted(s["Spec"]["Name"].rsplit("-", 1)[1] for s in mine) == ["cafile", "certfile", "keyfile"]
    env = pid1_env(user("ann"))
    assert env["JUPYTERHUB_SSL_KEYFILE"] == "/run/secrets/jupyterhub-keyfile", env
    assert env["JUPYTERHUB_API_URL"].startswith(f"https://{HUB_IP}:"), env
    print(f"network probes: {time.monotonic() - started:.1f} s: {seen}")


def test_2_refusals_name_what_is_free_per_node_and_quotas_hold_across_nodes(hub: RealHub):
    # One unit free on each node: three units are free, but not two on one node.
    r = hub.start_server(user("dan"), "gpu2")
    assert r.status_code == 503, r.text
    message = refusal(r)
    assert "on one node" in message, message
    for n in (1, 2, 3):
        assert re.search(rf"gpu-node-{n}: [^;]*\b1 NVIDIA L4 GPU\b", message), message
    # An image whose own environment names a GPU is refused before any unit is assigned.
    r = hub.start_server(user("kim"), "named-gpu")
    assert r.status_code == 400, r.text
    assert "sets DOCKER_RESOURCE_NVIDIA-GPU in its environment" in refusal(r), refusal(r)
    assert "profile named-gpu" not in hub.log_text()  # the "Starting ..." line comes after the assignment
    assert not manager().services(filters={"label": f"gpuspawner.user={user('kim')}"})
    assert not manager().secrets(filters={"label": f"gpuspawner.user={user('kim')}"})  # its internal_ssl secrets
    # A group quota of 2 counts its members' servers on every node.
    spawn_at_once(hub, ["gia", "hal", "mia", "joe"], "gpu", mia="mig", joe="cpu")
    # A MIG instance is a unit of its own kind: Swarm assigns one, on the node that has them.
    host, units = where(user("mia"))
    assert host == "gpu-node-3" and len(units) == 1 and units[0] in (mig(0), mig(1)), (host, units)
    env = pid1_env(user("mia"))
    assert env["DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB"] == units[0] and env["DOCKER_RESOURCE_NVIDIA-GPU"] == ""
    # A server without a GPU: every kind is blank, so no variable from anywhere can name a unit.
    env = pid1_env(user("joe"))
    assert env["DOCKER_RESOURCE_NVIDIA-GPU"] == env["DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB"] == "", env
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert where(user("gia"))[0] != where(user("hal"))[0]
    r = hub.start_server(user("ivy"), "gpu")
    assert r.status_code == 403, r.text
    assert "'ml101' is using 2 of its 2" in refusal(r), refusal(r)
    # One unit is left, on one node. A named server shares its user's home, so it
    # must run on the home's node: on a full node it is refused, saying why.
    full = {where(user(n))[0] for n in ("gia", "hal")}
    name = next(n for n in ("ann", "bob", "cem") if where(user(n))[0] in full)
    r = hub.start_server(user(name), "gpu", server="b")
    assert r.status_code == 503, r.text
    assert f"Your home is on {where(user(name))[0]}" in refusal(r), refusal(r)
    assert "Other nodes have 1 free" in refusal(r), refusal(r)


def test_3_a_drained_node_frees_its_units_and_stops_counting_them(hub: RealHub):
    host, units = where(user("bob"))
    servers = [user(x) for x in ("ann", "cem", "gia", "hal") if where(user(x))[0] != host]
    gone = [n for n in (user("gia"), user("hal")) if where(n)[0] == host]
    set_availability(host, "drain")
    try:
        deadline = time.monotonic() + 40
        for name in [user("bob"), *gone]:
            while hub.server_model(name) is not None:
                assert time.monotonic() < deadline, f"{name}'s server on drained {host} still listed:\n{hub.log_tail()}"
                time.sleep(0.5)
        assert f"Released GPUs {units[0]} of {user('bob')}/" in hub.log_tail(300)
        for name in servers:  # the servers on other nodes run on
            assert hub.server_model(name)["ready"]
        # The drained node's two units are not offered.
        r = hub.start_server(user("dan"), "gpu2")
        assert r.status_code == 503, r.text
        assert f"{host} (drained)" in refusal(r), refusal(r)
        assert "of 4 NVIDIA L4 GPUs" in refusal(r) or "all 4 NVIDIA L4 GPUs" in refusal(r), refusal(r)
        # bob's home is on the drained node: a clear refusal, not a new empty home.
        r = hub.start_server(user("bob"), "cpu")
        assert r.status_code == 503, r.text
        assert f"is on {host}, which is drained" in refusal(r), refusal(r)
    finally:
        set_availability(host, "active")
    hub.spawn(user("bob"), "gpu")
    assert where(user("bob"))[0] == host  # back on the node with the home


def held_in_swarm() -> int:
    """Whole GPUs Swarm has assigned to this run's running tasks."""
    api = manager()
    services = {s["ID"] for s in api.services(filters={"label": E2E_LABEL})}
    return sum(
        sum(r["NamedResourceSpec"]["Kind"] == "NVIDIA-GPU" for r in t.get("GenericResources") or ())
        for t in api.tasks(filters={"desired-state": "running"})
        if t["ServiceID"] in services and t["Status"]["State"] == "running"
    )


def test_4_a_restarted_hub_rebuilds_the_ledger_from_swarm(hub: RealHub):
    placed = {name: where(user(name)) for name in ("ann", "cem")}
    hub.kill()
    hub.start()
    for name, (host, units) in placed.items():
        assert hub.server_model(user(name))["ready"]
        assert where(user(name)) == (host, units)
    # The restarted hub hands out exactly the units Swarm has not: no more, no fewer.
    free = 6 - held_in_swarm()
    assert 0 < free < 6
    spawn_at_once(hub, [f"new{i}" for i in range(free)], "gpu")
    r = hub.start_server(user("fay"), "gpu")
    assert r.status_code == 503, r.text
    assert "all 6 NVIDIA L4 GPUs are taken (6/6 in use)" in refusal(r), refusal(r)
    assert held_in_swarm() == 6


def test_5_the_home_is_kept_when_the_server_comes_back(hub: RealHub):
    host, _ = where(user("ann"))
    hub.stop_server(user("ann"))
    hub.spawn(user("ann"), "gpu")
    assert where(user("ann"))[0] == host
    assert run_in(user("ann"), ["cat", "/home/jovyan/work.txt"]).strip() == "kept"
    # Her previous server's internal_ssl secrets went with its service: three, this start's.
    assert len(manager().secrets(filters={"label": f"gpuspawner.user={user('ann')}"})) == 3
    # And the hub's route reaches the server on its node, through the proxy.
    r = hub.request("GET", f"/users/{user('ann')}")
    assert json.loads(r.text)["servers"][""]["url"]

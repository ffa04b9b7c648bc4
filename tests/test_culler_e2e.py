"""GPU culling on the real hub, proxy and engine, with the culler as a hub-managed service.

GPU usage comes from a file this test writes (the culler's ``--usage-file``), in
NVML's terms: real host pids, which the culler places in containers through
their real cgroups. Two simulated GPUs and a MIG instance, three servers:

- alice: idle (a host process and bob's container run on her GPU, which is not her use): stopped,
  told why on her next spawn page, home volume kept, her GPU given to dave;
- bob: his own container's process keeps his GPU busy: survives;
- carol, on the MIG instance: busy too, but past her profile's ``max_runtime``: stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import datetime, timedelta, timezone

import pytest

from gpuspawner.dashboard.sources import Sources
from gpuspawner.gpus import Inventory, Policy, parse_static_inventory

from .realhub import engine, home_volume, mig_instances, read_testbed, running_hub, simulated_gpus, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)
GPUS = [f"GPU-c0110000-0000-4000-8000-00000000000{i}" for i in range(2)]
MIG = "MIG-c0110000-0000-4000-8000-0000000000m0"
UNITS = simulated_gpus(GPUS) + mig_instances([MIG], index=2, parent_uuid="GPU-c0110000-0000-4000-8000-000000000002")
IDLE_TIMEOUT = 4  # seconds
MAX_RUNTIME = 15  # from her start (all three start at once): time to see every server running, even on a slow machine


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hub")
    usage = workdir / "usage.json"
    usage.write_text("{}")  # every unit unknown: nobody is idle yet
    stops = workdir / "stops.jsonl"
    small = {"image": read_testbed("image"), "mem_limit": "512M", "cpu_limit": 0.5}
    gpus = UNITS
    config = f"""
    c.GPUSpawner.gpus = {gpus!r}
    c.GPUSpawner.profiles = [
        dict(slug="gpu", display_name="One A100", gpus=1, gpu_idle_timeout={IDLE_TIMEOUT}, **{small!r}),
        dict(slug="long", display_name="Long run", gpus=1, mig_profile="1g.10gb", gpu_idle_timeout=0,
             max_runtime={MAX_RUNTIME},
             **{small!r}),
    ]
    c.GPUSpawner.stops_file = {str(stops)!r}
    c.GPUSpawner.home_volume_name = "jupyterhub-user-{{username}}"
    # The opt-in host network (servers on 127.0.0.1 of the host), which this hub keeps tested.
    c.GPUSpawner.network_name = "host"
    from gpuspawner import services
    services.add_culler(c, __file__, cull_every=1, args=[{f"--usage-file={usage}"!r}])
    """
    with running_hub(workdir, config, RUN, lab=False) as hub:
        yield hub, usage, stops


def write_usage(path, readings: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(readings))
    tmp.replace(path)  # the culler never reads half a file


def busy(pid: int) -> dict:
    """A unit's reading: the process ``pid`` alone on it, running kernels 90% of the time."""
    return {"utilization": 90, "processes": [pid], "process_utilization": {str(pid): 90}}


def running_pid(hub, name: str, timeout: float = 120) -> int:
    """The host pid of the server's PID 1, once its container runs."""

    def pid() -> int:
        found = engine().containers.list(filters={"label": [f"gpuspawner.user={name}", "gpuspawner.server="]})
        return found[0].attrs["State"]["Pid"] if found else 0

    return wait_for(pid, timeout, f"a running container for {name}", details=hub.log_tail)


def test_idle_stopped_busy_kept_time_limit_enforced(lab):
    hub, usage, stops = lab
    alice, bob, carol, dave = (user(n) for n in ("alice", "bob", "carol", "dave"))
    for r in hub.start_servers((carol, "long"), (alice, "gpu"), (bob, "gpu")):  # all three start at once
        assert r.status_code in (201, 202), r.text
    # Usage as soon as the containers run (carol's time limit may come before this test sees her ready).
    pid = {name: running_pid(hub, name) for name in (carol, alice, bob)}
    unit = {name: hub.visible_devices(name) for name in (alice, bob, carol)}
    assert sorted(unit.values()) == sorted([*GPUS, MIG])
    written = datetime.now(timezone.utc).replace(microsecond=0)
    write_usage(
        usage,
        {
            # Busy, but with a host process (this test) and another container's (bob's): not alice's use.
            unit[alice]: {
                "utilization": 90,
                "processes": [os.getpid(), pid[bob]],
                "process_utilization": {str(pid[bob]): 90},
            },
            # Bob's own process is busy; alice's idle process on his GPU changes nothing for him.
            unit[bob]: {
                "utilization": 80,
                "processes": [pid[bob], pid[alice]],
                "process_utilization": {str(pid[bob]): 80},
            },
            # A MIG instance: NVML measures no utilisation there; carol's own process is on it.
            unit[carol]: {"utilization": None, "processes": [pid[carol]]},
        },
    )
    for name in (alice, bob):
        hub.wait_ready(name)
    alice_volume = home_volume(hub.container(alice))
    assert hub.container(alice).attrs["HostConfig"]["NetworkMode"] == "host"  # the opt-in
    # The GPU is also named as a mount, for a toolkit that reads device lists only from mounts.
    mounts = {m["Destination"]: m for m in hub.container(alice).attrs["Mounts"]}
    assert mounts[f"/var/run/nvidia-container-devices/{unit[alice]}"]["RW"] is False
    # Both whole GPUs are held: dave cannot start.
    assert hub.start_server(dave, "gpu").status_code == 503

    hub.wait_gone(alice, timeout=IDLE_TIMEOUT + 30)
    (record,) = [r for r in map(json.loads, stops.read_text().splitlines()) if r["user"] == alice]
    assert record["reason"] == "gpu_idle"
    assert record["message"] == f"stopped after {IDLE_TIMEOUT} seconds without GPU use"
    # Not before her GPU had been idle that long (the culler's first idle round came after the write).
    assert datetime.fromisoformat(record["time"]) >= written + timedelta(seconds=IDLE_TIMEOUT)

    # The GPU is free again and goes to the next student; the home volume stays.
    r = hub.start_server(dave, "gpu")
    assert r.status_code in (201, 202), r.text
    # Dave's own process keeps the GPU busy before his server is ready (the culler judges ready servers):
    # else his profile's idle timeout would stop him too, before carol's time limit, on a fast spawn.
    pid[dave] = running_pid(hub, dave)
    write_usage(usage, {**json.loads(usage.read_text()), unit[alice]: busy(pid[dave])})
    hub.wait_ready(dave)
    assert hub.visible_devices(dave) == unit[alice]
    assert engine().volumes.get(alice_volume)
    # Alice's next spawn page says why.
    page = hub.login(alice).get(f"{hub.url}/hub/spawn", timeout=30).text
    assert f"Your last server was stopped after {IDLE_TIMEOUT} seconds without GPU use" in page
    assert "Your files are kept" in page

    # Bob's own process keeps his GPU busy: still running, several idle timeouts later.
    assert hub.server_model(bob) and hub.server_model(bob)["ready"]
    # Carol stays busy but reaches her time limit.
    hub.wait_gone(carol, timeout=MAX_RUNTIME + 20)
    reasons = {json.loads(line)["user"]: json.loads(line)["reason"] for line in stops.read_text().splitlines()}
    assert reasons == {alice: "gpu_idle", carol: "max_runtime"}
    # The dashboard's reading of the same files lists both stops, and bob and dave holding GPUs.
    inventory = Inventory(units=parse_static_inventory(UNITS), source="static")
    view = asyncio.run(
        Sources(inventory, Policy(), lambda: engine().api, None, "", nvml=False, stops_file=str(stops)).view()
    )
    assert {(e.user, e.reason) for e in view.stops} == {(alice, "gpu_idle"), (carol, "max_runtime")}
    assert {u.id: [h.user for h in u.holders] for u in view.units} == {unit[alice]: [dave], unit[bob]: [bob], MIG: []}
    model = hub.server_model(bob)
    assert model and model["ready"], "a busy server was culled"
    hub.stop_servers((bob,), (dave,))

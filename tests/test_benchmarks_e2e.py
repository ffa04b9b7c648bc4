"""The benchmarks, small and quick, so that they keep working: correctness only, never time.

Each benchmark of ``benchmarks/`` runs here at a small size against the real
hubs, proxy, engine and registry on loopback, and the test checks what it
reports: every container running, GPU assignments distinct, the figures all
there. Also here: a slow Docker call of one user does not hold up another's,
on the real engine, where plain DockerSpawner's single thread does.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from pathlib import Path

import docker
import pytest

from gpuspawner import GPUSpawner
from gpuspawner.docker_pool import DockerCalls

from .fakes import make_spawner
from .realhub import E2E_LABEL, docker_host, engine, read_testbed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _lab  # noqa: E402
import allocation  # noqa: E402
import burst_during_pull  # noqa: E402
import class_burst  # noqa: E402
import restart  # noqa: E402
import single_spawn  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = _lab.new_run()
USERS, GPUS = 4, 2


@pytest.fixture(scope="module")
def big_image(tmp_path_factory, lab_registry):
    """A small "large image" in a registry on loopback, absent from the engine."""
    tmp = tmp_path_factory.mktemp("bench-pull")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(tmp / "docker-config"))  # no user's credential helper
        address, _ = lab_registry
        ref = _lab.push_large_image(address, 4, tmp, RUN)
        yield ref
        _lab.remove_image(ref)


@pytest.fixture(scope="module")
def hubs(tmp_path_factory, big_image):
    with _lab.hub_pair(tmp_path_factory.mktemp("bench-hubs"), RUN, gpus=GPUS, big_image=big_image) as pair:
        yield pair


def finite(*values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in values)


def test_single_spawn(hubs):
    result = single_spawn.run(hubs, rounds=1, run_id=RUN, warmup=False)
    for kind in _lab.KINDS:
        assert result[kind]["errors"] == []
        assert finite(result[kind]["running_median_s"], result[kind]["ready_median_s"])
        # the container is running before the hub calls the server ready
        assert result[kind]["running_median_s"] <= result[kind]["ready_median_s"]
    assert finite(result["running_ratio"], result["ready_ratio"])
    assert "container running" in single_spawn.report(result)


def test_class_burst(hubs):
    result = class_burst.run(hubs, USERS, GPUS, rounds=1, run_id=RUN)
    for kind in _lab.KINDS:
        assert result[kind]["errors"] == []
        assert finite(*(result[kind][key] for key in class_burst.FIGURES))
        (burst,) = result[kind]["bursts"]
        assert burst["users"] == USERS and burst["gpu_users"] == GPUS
    gpu = result[_lab.GPU]["bursts"][0]
    assert result[_lab.GPU]["gpus_ok"] and gpu["gpus_assigned"] == GPUS and gpu["gpus_distinct"]
    assert result[_lab.DOCKER]["bursts"][0]["gpus_assigned"] == 0  # plain DockerSpawner assigns none
    assert finite(result["all_running_ratio"])
    assert "all distinct | yes" in class_burst.report(result)


def test_burst_during_pull(hubs, big_image):
    result = burst_during_pull.run(hubs, USERS, GPUS, rounds=1, run_id=RUN, big_image=big_image)
    for kind in _lab.KINDS:
        assert result[kind]["errors"] == [] and result[kind]["puller_errors"] == []
        assert result[kind]["gpus_ok"]
        assert finite(result[kind]["puller_running_s"])
        for key in ("max_delay_s", "p50_delay_s", "all_running_delay_s", "outside_max_delay_s"):
            assert math.isfinite(result[kind][key])
        (row,) = result[kind]["rounds"]
        assert row["during_pull"]["users"] == row["no_pull"]["users"] == row["outside_pull"]["users"] == USERS - 1
    with pytest.raises(docker.errors.ImageNotFound):  # removed again: the next round pulls afresh
        engine().images.get(big_image)
    assert "pulling user" in burst_during_pull.report(result)


def test_allocation_core():
    for quotas in (True, False):
        result = allocation.run(decisions=300, quotas=quotas)
        assert result["decisions"] == result["granted"] + result["refused"] == 300
        assert result["granted"] > 0 and result["refused"] > 0  # the lab was filled
        assert result["exclusive_units_distinct"] and result["units_held_at_end"] <= 64
        assert finite(result["decisions_per_s"])


def test_allocation_core_on_a_swarm():
    result = allocation.run_swarm(decisions=300)
    assert result["decisions"] == result["granted"] + result["refused"] == 300
    assert result["granted"] > 0 and result["refused"] > 0  # the nodes were filled
    assert result["nodes"] == 3 and result["units"] == 24 and result["without_home"] == 100
    # every holding on one node, and no whole GPU held twice
    assert result["units_on_one_node"] and result["exclusive_units_distinct"]
    assert result["units_held_at_end"] <= 24
    assert finite(result["decisions_per_s"])


def test_restart():
    result = restart.run(containers=6, repeats=2, run_id=RUN)
    assert result["containers"] == 6 and len(result["rebuild_s"]) == 2
    assert finite(result["rebuild_median_s"])
    assert not engine().containers.list(all=True, filters={"label": f"{E2E_LABEL}={RUN}:{os.getpid()}"})


# --- a slow call of one user, on the real engine


@pytest.fixture
def sleeper():
    """A container that exits 3 s after it starts: ``wait`` on it is a slow Docker call."""
    api = engine().api
    c = api.create_container(
        read_testbed("image"),
        ["sleep", "3"],
        labels={E2E_LABEL: f"{RUN}:{os.getpid()}"},
        host_config=api.create_host_config(network_mode="none"),
    )
    api.start(c["Id"])
    yield c["Id"]
    api.remove_container(c["Id"], force=True)


async def handed_to_the_pool(server_order, timeout: float = 10) -> None:
    """Until a server's Docker call has been handed to the pool: its order lock is taken just before."""
    deadline = time.monotonic() + timeout
    while (lock := server_order()) is None or not lock.locked():
        assert time.monotonic() < deadline, "the call never reached the pool"
        await asyncio.sleep(0.005)


@pytest.fixture
def real_spawners():
    client = docker.APIClient(base_url=docker_host(), version="auto")
    yield [make_spawner(GPUSpawner, client, user=u, denials_file="", prepull_images=False) for u in ("ana", "ben")]


async def test_a_slow_call_of_one_user_does_not_hold_up_another(real_spawners, sleeper):
    ana, ben = real_spawners
    image = read_testbed("image")
    slow = asyncio.ensure_future(ana.docker("wait", sleeper))
    await handed_to_the_pool(lambda: ana._docker_order)  # ana's wait is in flight
    t0 = time.monotonic()
    for _ in range(3):
        assert (await ben.docker("inspect_image", image))["Id"].startswith("sha256:")
    ben_done = time.monotonic() - t0
    assert not slow.done(), f"ana's wait finished before ben's calls ({ben_done:.2f} s)"
    assert (await slow)["StatusCode"] == 0


async def test_dockerspawners_single_thread_holds_everyone_up(real_spawners, sleeper):
    """The same calls through one thread, as DockerSpawner makes them: the test above can fail."""
    client = real_spawners[0].client
    one_thread = DockerCalls(1)
    try:
        order = asyncio.Lock()
        slow = asyncio.ensure_future(one_thread.call(order, client, "wait", sleeper))
        await handed_to_the_pool(lambda: order)  # the wait is first in the thread's queue
        await one_thread.call(asyncio.Lock(), client, "inspect_image", read_testbed("image"))
        assert slow.done()  # ben waited for all of ana's call
    finally:
        one_thread.close()


def test_allocation_core_with_the_wait_queue():
    for quotas, lab_units in ((True, 0), (False, 8)):
        result = allocation.run_queue(decisions=600, quotas=quotas, lab_units=lab_units)
        assert result["decisions"] == 600 and result["admit_n_us"] > 0 and result["after_stop_n_us"] > 0
        assert result["longest_line"] > 0 and result["granted_from_line"] > 0  # the line formed and moved
        assert result["exclusive_units_distinct"] and result["waiting_hold_nothing"]
        assert result["standings_at_end"] == result["line_at_end"]
        assert all(finite(result[f"{kind}_mean_us"]) for kind in ("admit", "after_stop"))

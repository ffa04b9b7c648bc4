"""GPUSpawner end to end: a real jupyterhub process, the real proxy, the test bed's engine.

The engine has a test double of ``nvidia-container-runtime-hook`` on its PATH,
so Docker's own GPU path runs: the device ids a container gets are the ones
dockerd writes into its PID-1 environment, as on a GPU host.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets

import pytest

from .realhub import RealHub, engine, home_volume, read_testbed, running_hub, simulated_gpus

pytestmark = [pytest.mark.docker, pytest.mark.hub]

RUN = secrets.token_hex(3)  # fresh users (and home volumes) each run
GPU_IDS = {"GPU-e2e00000-0000-0000-0000-000000000000", "GPU-e2e11111-1111-1111-1111-111111111111"}


def user(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    image = read_testbed("image")
    cuda_image = read_testbed("image-cuda")  # sets NVIDIA_VISIBLE_DEVICES=all, as CUDA images do
    gpus = simulated_gpus(sorted(GPU_IDS))
    config = f"""
    c.GPUSpawner.profiles = [
        {{"slug": "cpu", "display_name": "CPU only", "image": {cuda_image!r},
          "mem_limit": "1G", "cpu_limit": 1}},
        {{"slug": "gpu", "display_name": "One GPU", "image": {cuda_image!r}, "gpus": 1,
          "mem_limit": "1G", "cpu_limit": 1, "shm_size": "256M"}},
        {{"slug": "plain", "display_name": "Plain image", "image": {image!r}}},
        {{"slug": "missing", "display_name": "Image not on this host", "gpus": 2,
          "image": "gpuspawner-lab-missing:never-built"}},
    ]
    c.GPUSpawner.gpus = {gpus!r}
    """
    with running_hub(tmp_path_factory.mktemp("hub"), config, RUN) as h:
        yield h


def spawn(hub: RealHub, name: str, profile: str | None = None) -> dict:
    return hub.spawn(name, profile)


def visible_devices(hub: RealHub, name: str) -> str:
    return hub.visible_devices(name)


def test_a_failed_spawn_holds_no_gpu_and_leaves_no_container(hub):
    """The ledger assigns both GPUs, then the start fails: both must be free again."""
    zoe = user("zoe")
    r = hub.start_server(zoe, "missing")
    assert r.status_code >= 400, r.text
    assert hub.server_model(zoe) is None
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={zoe}"})


def test_two_students_on_a_gpu_profile_get_different_gpus(hub):
    alice, bob = user("alice"), user("bob")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: spawn(hub, n, "gpu"), [alice, bob]))
    seen = {visible_devices(hub, alice), visible_devices(hub, bob)}
    assert seen == GPU_IDS
    for name in (alice, bob):
        attrs = hub.container(name).attrs
        (request,) = attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == [visible_devices(hub, name)]
        assert attrs["HostConfig"]["ShmSize"] == 256 * 1024**2
        # Each on the lab network, in a network namespace of its own, on the fixed port.
        assert attrs["HostConfig"]["NetworkMode"] == hub.lab.name
        assert list(attrs["NetworkSettings"]["Networks"]) == [hub.lab.name]
        assert hub.server_model(name)["url"].startswith("/user/")


def test_no_gpu_free_is_refused_at_once_and_holds_nothing(hub):
    carol = user("carol")
    r = hub.start_server(carol, "gpu")
    assert r.status_code == 503, r.text
    assert r.json()["message"] == (
        "One GPU: Needs 1 whole GPU: all 2 NVIDIA A100-SXM4-80GB GPUs are taken (2/2 in use)."
        " Can start now: CPU only; Plain image."
    )
    # Refused at once, not after start_timeout: by the spawner, before any container (how fast:
    # benchmarks/refusal.py).
    hub.refused_before_start(carol)
    assert hub.server_model(carol) is None
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={carol}"})


def test_unknown_profile_is_a_clear_400(hub):
    r = hub.start_server(user("dave"), "tpu")
    assert r.status_code == 400
    assert "unknown profile 'tpu'; choose one of: cpu, gpu, plain" in r.json()["message"]


def test_cpu_profile_gets_void_even_from_a_cuda_image(hub):
    dave = user("dave")
    spawn(hub, dave, "cpu")
    c = hub.container(dave)
    assert visible_devices(hub, dave) == "void"
    assert not c.attrs["HostConfig"].get("DeviceRequests")
    assert c.attrs["HostConfig"]["Memory"] == 1024**3
    assert c.attrs["HostConfig"]["CpuQuota"] == 100_000
    assert c.labels["gpuspawner.profile"] == "cpu"


def test_default_profile_is_the_first(hub):
    erin = user("erin")
    spawn(hub, erin)
    assert hub.container(erin).labels["gpuspawner.profile"] == "cpu"
    hub.stop_server(erin)


def test_stopping_frees_the_gpu_for_the_next_student(hub):
    alice, carol = user("alice"), user("carol")
    freed = visible_devices(hub, alice)
    home = home_volume(hub.container(alice))
    hub.stop_server(alice)
    assert not engine().containers.list(all=True, filters={"label": f"gpuspawner.user={alice}"})
    engine().volumes.get(home)  # the home is kept
    spawn(hub, carol, "gpu")
    assert visible_devices(hub, carol) == freed


def test_home_survives_stop_and_start(hub):
    dave = user("dave")
    note = f"written by {dave} before the break"
    contents = f"{hub.url}/user/{dave}/api/contents/notes.txt"
    headers = {"Authorization": f"token {hub.token}"}
    import requests

    r = requests.put(
        contents, headers=headers, timeout=30, data=json.dumps({"type": "file", "format": "text", "content": note})
    )
    assert r.status_code in (200, 201), r.text
    hub.stop_server(dave)
    spawn(hub, dave, "plain")  # another profile, the same home
    r = requests.get(contents, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == note
    # DockerSpawner's escaping of the user name: '-' is '-2d' in a volume name
    assert home_volume(hub.container(dave)) == f"jupyterhub-user-{dave.replace('-', '-2d')}"


def test_hub_restart_loses_no_assignment(hub):
    bob, carol, frank, grace = user("bob"), user("carol"), user("frank"), user("grace")
    kept = visible_devices(hub, bob)
    hub.stop_server(carol)
    hub.stop()
    hub.start()
    assert hub.server_model(bob)["ready"]
    spawn(hub, frank, "gpu")
    assert visible_devices(hub, frank) == (GPU_IDS - {kept}).pop()
    assert hub.start_server(grace, "gpu").status_code == 503
    assert visible_devices(hub, bob) == kept


def test_a_crashed_server_frees_its_gpu_and_keeps_its_home(hub):
    frank, grace = user("frank"), user("grace")
    container = hub.container(frank)
    gpu, home = visible_devices(hub, frank), home_volume(container)
    container.kill()  # the server dies under the hub; the hub's poll notices
    hub.wait_gone(frank, timeout=30)
    engine().volumes.get(home)
    spawn(hub, grace, "gpu")
    assert visible_devices(hub, grace) == gpu

"""GPUSpawner's glue, above a fake Docker client: what it asks the engine for."""

import pytest
from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import TraitError

from gpuspawner import GPUSpawner
from gpuspawner.spawner import LABEL_GPUS, LABEL_PROFILE, LABEL_USER, apply_profile_choice

from .fakes import FakeDocker, make_spawner

GPUS = [
    {"index": 0, "uuid": "GPU-0000", "name": "A100", "memory": "80G"},
    {"index": 1, "uuid": "GPU-1111", "name": "A100", "memory": "80G"},
]
PROFILES = [
    {"slug": "cpu", "display_name": "CPU", "image": "lab:1", "mem_limit": "2G", "cpu_limit": 1},
    {"slug": "gpu", "display_name": "GPU", "image": "lab:1", "gpus": 1, "shm_size": "1G"},
    {"slug": "two", "display_name": "Two GPUs", "image": "lab:1", "gpus": 2},
]


@pytest.fixture(autouse=True)
def fresh_lab():
    GPUSpawner._lab = None
    yield
    GPUSpawner._lab = None


@pytest.fixture
def engine():
    return FakeDocker()


def spawner(engine, user="alice", profile=None, **config):
    s = make_spawner(GPUSpawner, engine, user=user, profiles=PROFILES, gpus=GPUS, **config)
    s.user_options = {"profile": profile} if profile else {}
    apply_profile_choice(s, s.user_options)
    return s


def container_of(engine, s):
    return engine.inspect_container(s.object_id)


async def test_gpu_profile_gets_explicit_device_ids_labels_and_env(engine):
    s = spawner(engine, profile="gpu")
    ip, port = await s.start()
    assert ip == "127.0.0.1" and port == s.port
    c = container_of(engine, s)
    (request,) = c["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["GPU-0000"]
    assert request["Capabilities"] == [["gpu"]]
    assert c["HostConfig"]["ShmSize"] == 1024**3
    assert c["HostConfig"]["NetworkMode"] == "host"
    assert c["Labels"][LABEL_GPUS] == "GPU-0000"
    assert c["Labels"][LABEL_PROFILE] == "gpu"
    assert c["Labels"][LABEL_USER] == "alice"
    assert c["Env"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-0000"
    assert c["Env"]["JUPYTERHUB_SERVICE_URL"].startswith(f"http://127.0.0.1:{s.port}/")
    assert s.get_state()["gpus"] == ["GPU-0000"]


async def test_cpu_profile_gets_void_and_its_limits(engine):
    s = spawner(engine, profile="cpu")
    await s.start()
    c = container_of(engine, s)
    assert c["Env"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "DeviceRequests" not in c["HostConfig"]
    assert c["HostConfig"]["Memory"] == 2 * 1024**3
    assert c["HostConfig"]["CpuQuota"] == 100_000
    assert c["Labels"][LABEL_GPUS] == ""


async def test_home_volume_at_the_image_home(engine):
    s = spawner(engine)
    await s.start()
    binds = container_of(engine, s)["HostConfig"]["Binds"]
    assert "jupyterhub-user-alice:/home/jovyan:rw" in binds


async def test_home_from_workdir_and_admin_mount_wins(engine):
    engine.images["lab:1"] = {"WorkingDir": "/workspace", "Cmd": ["jupyterhub-singleuser"]}
    s = spawner(engine)
    await s.start()
    assert "jupyterhub-user-alice:/workspace:rw" in container_of(engine, s)["HostConfig"]["Binds"]
    await s.stop()
    s2 = spawner(engine, volumes={"/srv/homes/{username}": "/workspace"})
    await s2.start()
    assert container_of(engine, s2)["HostConfig"]["Binds"] == ["/srv/homes/alice:/workspace:rw"]


async def test_two_users_get_different_gpus_and_stop_frees(engine):
    alice, bob, carol = (spawner(engine, u, profile="gpu") for u in ("alice", "bob", "carol"))
    await alice.start()
    await bob.start()
    assert {alice.gpu_ids, bob.gpu_ids} == {("GPU-0000",), ("GPU-1111",)}
    with pytest.raises(SpawnException) as refused:
        await carol.start()
    assert refused.value.status_code == 503
    assert refused.value.message == (
        "GPU: Needs 1 whole GPU: all 2 A100 GPUs are taken (2/2 in use). Can start now: CPU."
    )
    assert refused.value.reason == "no_gpu"
    assert carol.gpu_ids == ()
    await alice.stop()
    assert alice.object_id == "" and alice.gpu_ids == ()
    await carol.start()
    assert carol.gpu_ids == ("GPU-0000",)


async def test_failed_start_holds_no_gpu_and_leaves_no_container(engine):
    engine.fail_start = True
    s = spawner(engine, profile="two")
    with pytest.raises(Exception, match="500 Server Error"):
        await s.start()
    assert engine.containers_by_id == {}
    lab = GPUSpawner._lab
    assert len(lab.ledger.free()) == 2 and lab.ports == {}


async def test_crash_seen_by_poll_frees_the_gpu(engine):
    s = spawner(engine, profile="two")
    await s.start()
    assert await s.poll() is None
    engine.crash(s.object_id)
    assert await s.poll() is not None
    assert len(GPUSpawner._lab.ledger.free()) == 2


async def test_restarted_hub_adopts_running_containers(engine):
    alice = spawner(engine, "alice", profile="gpu")
    await alice.start()
    state = alice.get_state()
    GPUSpawner._lab = None  # the hub restarts; the container keeps running

    again = spawner(engine, "alice")
    again.load_state(state)
    assert again.profile.slug == "gpu" and again.gpu_ids == ("GPU-0000",)
    assert await again.poll() is None
    bob = spawner(engine, "bob", profile="gpu")
    await bob.start()
    assert bob.gpu_ids == ("GPU-1111",)


def test_unknown_profile_is_a_400_naming_the_choices(engine):
    s = make_spawner(GPUSpawner, engine, profiles=PROFILES, gpus=GPUS)
    with pytest.raises(web.HTTPError) as e:
        apply_profile_choice(s, {"profile": "tpu"})
    assert e.value.status_code == 400
    assert "choose one of: cpu, gpu, two" in e.value.log_message


async def test_limits_of_one_start_do_not_leak_into_the_next(engine):
    s = spawner(engine, profile="cpu", mem_limit="8G")
    await s.start()
    assert s.mem_limit == 2 * 1024**3
    await s.stop()
    s.user_options = {"profile": "gpu"}
    apply_profile_choice(s, s.user_options)
    await s.start()
    assert s.mem_limit == 8 * 1024**3 and not s.cpu_limit  # the hub-wide values again
    assert container_of(engine, s)["HostConfig"]["Memory"] == 8 * 1024**3


def test_remove_false_is_refused(engine):
    with pytest.raises(TraitError, match="GPUSpawner.remove must be True"):
        make_spawner(GPUSpawner, engine, remove=False)


def test_bad_config_is_refused_when_loaded(engine):
    with pytest.raises(TraitError, match="GPUSpawner.profiles: profile 'x': field 'gpus'"):
        make_spawner(GPUSpawner, engine, profiles=[{"slug": "x", "display_name": "X", "image": "i:1", "gpus": "one"}])
    with pytest.raises(TraitError, match=r"GPUSpawner.gpus: gpus\[0\]: missing"):
        make_spawner(GPUSpawner, engine, gpus=[{"index": 0}])


async def test_without_profiles_it_is_a_dockerspawner(engine):
    s = make_spawner(GPUSpawner, engine, image="lab:1")
    s.user_options = {}
    await s.start()
    assert s.profile.slug == "default"
    assert container_of(engine, s)["Env"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert s.options_form == ""


async def test_spawn_page_lists_profiles_escaped(engine):
    profiles = PROFILES + [{"slug": "x", "display_name": "<script>alert(1)</script>", "image": "lab:1"}]
    s = make_spawner(GPUSpawner, engine, profiles=profiles, gpus=GPUS)
    s.user_options = {}
    html = await s.get_options_form()
    assert 'value="gpu"' in html and "2 of 2 GPUs free now" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert s.options_from_form({"profile": ["gpu"]}) == {"profile": "gpu"}

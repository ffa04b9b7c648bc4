"""GPUSpawner's glue, above a fake Docker client: what it asks the engine for."""

import asyncio
import json

import pytest
from jupyterhub import orm
from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import TraitError

from gpuspawner import GPUSpawner
from gpuspawner.eventfiles import DenialLog
from gpuspawner.hub_state import reset_hub_state
from gpuspawner.labels import GPUS as LABEL_GPUS
from gpuspawner.labels import PROFILE as LABEL_PROFILE
from gpuspawner.labels import USER as LABEL_USER
from gpuspawner.profiles import ProfileError
from gpuspawner.spawner import apply_profile_choice

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


@pytest.fixture
def engine():
    return FakeDocker()


def spawner(engine, user="alice", profile=None, groups=(), admin=False, profiles=PROFILES, **config):
    config.setdefault("denials_file", "")  # never into the working tree
    config.setdefault("mount_roots", ["/srv/datasets", "/srv/share"])  # what COURSES mounts
    config.setdefault("mount_volumes", ["cifar-*"])
    s = make_spawner(GPUSpawner, engine, user=user, groups=groups, admin=admin, profiles=profiles, gpus=GPUS, **config)
    s.user_options = {"profile": profile} if profile else {}
    apply_profile_choice(s, s.user_options)
    return s


def container_of(engine, s):
    return engine.inspect_container(s.object_id)


async def test_gpu_profile_gets_explicit_device_ids_labels_and_env(engine):
    s = spawner(engine, profile="gpu")
    ip, port = await s.start()
    c = container_of(engine, s)
    # On the lab network, at the container's own address, on the fixed port.
    assert (ip, port) == (c["NetworkSettings"]["Networks"]["gpuspawner-lab"]["IPAddress"], 8888)
    (request,) = c["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["GPU-0000"]
    assert request["Capabilities"] == [["gpu"]]
    assert c["HostConfig"]["ShmSize"] == 1024**3
    assert c["HostConfig"]["NetworkMode"] == "gpuspawner-lab"
    assert c["Labels"][LABEL_GPUS] == '["GPU-0000"]'  # a JSON list (labels.py)
    assert c["Labels"][LABEL_PROFILE] == "gpu"
    assert c["Labels"][LABEL_USER] == "alice"
    assert c["Env"]["NVIDIA_VISIBLE_DEVICES"] == "GPU-0000"
    assert c["Env"]["JUPYTERHUB_SERVICE_URL"].startswith("http://0.0.0.0:8888/")  # all of its own namespace
    assert s.get_state()["gpus"] == ["GPU-0000"]


async def test_gpus_are_also_named_as_volume_mounts_for_the_toolkit(engine):
    s = spawner(engine, profile="gpu")
    await s.start()
    binds = container_of(engine, s)["HostConfig"]["Binds"]
    assert "/dev/null:/var/run/nvidia-container-devices/GPU-0000:ro" in binds
    cpu = spawner(engine, user="bob", profile="cpu")
    await cpu.start()
    assert not [b for b in container_of(engine, cpu)["HostConfig"]["Binds"] if "nvidia-container-devices" in b]
    off = spawner(engine, user="carol", profile="gpu", device_list_as_volume_mounts=False)
    await off.start()
    assert not [b for b in container_of(engine, off)["HostConfig"]["Binds"] if "nvidia-container-devices" in b]


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
    engine.images["lab:1"] = {"WorkingDir": "/workspace", "User": "1000", "Cmd": ["jupyterhub-singleuser"]}
    s = spawner(engine)
    await s.start()
    assert "jupyterhub-user-alice:/workspace:rw" in container_of(engine, s)["HostConfig"]["Binds"]
    await s.stop()
    s2 = spawner(engine, volumes={"/srv/homes/{username}": "/workspace"})
    await s2.start()
    assert container_of(engine, s2)["HostConfig"]["Binds"] == ["/srv/homes/alice:/workspace:rw"]


async def test_two_users_get_different_gpus_and_stop_frees(engine, tmp_path):
    denials = tmp_path / "denials.jsonl"
    alice, bob, carol = (
        spawner(engine, u, profile="gpu", denials_file=str(denials)) for u in ("alice", "bob", "carol")
    )
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
    (denial,) = [json.loads(line) for line in denials.read_text().splitlines()]
    assert {k: denial[k] for k in ("user", "server", "profile", "reason")} == {
        "user": "carol",
        "server": "",
        "profile": "gpu",
        "reason": "no_gpu",
    }
    assert denial["message"] == refused.value.message
    assert carol.gpu_ids == ()
    # JupyterHub polls a failed spawn before it cleans up: a refusal made no container, so no engine call.
    calls = len(engine.calls)
    assert await carol.poll() == 0
    assert engine.calls[calls:] == []
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
    assert len(s.shared.ledger.free()) == 2 and s.shared.ports == {}


async def test_crash_seen_by_poll_frees_the_gpu(engine):
    s = spawner(engine, profile="two")
    await s.start()
    assert await s.poll() is None
    engine.crash(s.object_id)
    assert await s.poll() is not None
    assert len(s.shared.ledger.free()) == 2


async def test_restarted_hub_adopts_running_containers(engine):
    alice = spawner(engine, "alice", profile="gpu")
    await alice.start()
    state = alice.get_state()
    reset_hub_state()  # the hub restarts; the container keeps running

    again = spawner(engine, "alice")
    again.load_state(state)
    assert again.profile.slug == "gpu" and again.gpu_ids == ("GPU-0000",)
    assert await again.poll() is None
    bob = spawner(engine, "bob", profile="gpu")
    await bob.start()
    assert bob.gpu_ids == ("GPU-1111",)


async def test_a_hub_killed_mid_spawn_finds_the_servers_address_in_its_container(engine):
    # The hub stored the server's row before start() returned: no address, and not the port it listens on.
    alice = spawner(engine, "alice", profile="gpu", network_name="host")
    await alice.start()
    listens = alice.port
    reset_hub_state()  # SIGKILLed: no state saved either

    again = spawner(engine, "alice", network_name="host")
    again.orm_spawner.server = orm.Server(
        proto="http", ip="", port=listens + 1, base_url="/user/alice/", cookie_name="c"
    )
    assert await again.poll() is None
    assert await again.get_url() == f"http://127.0.0.1:{listens}/user/alice/"
    # An address stored by the hub is trusted, as JupyterHub does.
    again.orm_spawner.server = orm.Server(
        proto="http", ip="127.0.0.1", port=listens, base_url="/user/alice/", cookie_name="c"
    )
    assert await again.get_url() == f"http://127.0.0.1:{listens}/user/alice/"


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
    assert s.mem_limit == 8 * 1024**3 and s.cpu_limit == 2  # the hub-wide values again (cpu: the default)
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
    assert await s.get_options_form() == ""


async def test_spawn_page_lists_profiles_escaped(engine):
    profiles = PROFILES + [
        {"slug": "x", "display_name": "<script>alert(1)</script>", "image": "lab:1"},
        {"slug": "sh", "display_name": "Shared", "image": "lab:1", "shared_gpu": True},
    ]
    s = make_spawner(GPUSpawner, engine, profiles=profiles, gpus=GPUS)
    s.user_options = {}
    html = await s.get_options_form()
    assert 'value="gpu"' in html and "2 of 2 A100 free now" in html
    assert "8 free slots now on 2 shared A100" in html  # 4 a GPU by default (shared_gpu_users)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the cards' own refresh, nothing a profile wrote
    assert s.options_from_form({"profile": ["gpu"]}) == {"profile": "gpu"}


async def test_hardened_by_default(engine):
    s = spawner(engine, profile="gpu")
    await s.start()
    host = container_of(engine, s)["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert host["PidsLimit"] == 4096


async def test_hardening_loosened_explicitly(engine):
    s = spawner(engine, no_new_privileges=False, cap_drop=[], pids_limit=0)
    await s.start()
    host = container_of(engine, s)["HostConfig"]
    assert "SecurityOpt" not in host and "CapDrop" not in host and "PidsLimit" not in host


@pytest.mark.parametrize("user", ["", "root", "0", "00", "0:0", "root:users"], ids=repr)
async def test_root_image_refused_before_any_gpu_unless_allowed(engine, user):
    engine.images["root:1"] = {"Cmd": ["jupyterhub-singleuser"], "User": user}
    profiles = [{"slug": "root", "display_name": "Root", "image": "root:1", "gpus": 1}]
    s = spawner(engine, profiles=profiles)
    with pytest.raises(SpawnException, match="runs as root") as e:
        await s.start()
    assert e.value.reason == "image_root"
    assert len(s.shared.ledger.free()) == 2
    assert engine.containers_by_id == {}
    s = spawner(engine, "bob", profiles=profiles, allow_root=True)
    await s.start()
    assert s.gpu_ids == ("GPU-0000",)


async def test_a_user_name_for_uid_0_is_refused_and_each_images_users_are_read_once(engine):
    engine.images["alias:1"] = {"Cmd": ["jupyterhub-singleuser"], "User": "toor"}
    engine.passwd["alias:1"] = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\n"
    engine.passwd["lab:1"] = "jovyan:x:1000:100::/home/jovyan:/bin/bash\n"
    profiles = [
        {"slug": "alias", "display_name": "Alias", "image": "alias:1", "gpus": 1},
        {"slug": "lab", "display_name": "Lab", "image": "lab:1"},
    ]
    s = spawner(engine, profile="alias", profiles=profiles)
    with pytest.raises(SpawnException, match="runs as root") as e:
        await s.start()
    assert e.value.reason == "image_root" and len(s.shared.ledger.free()) == 2
    for user in ("bob", "carol"):  # jovyan is uid 1000: both start, and the image's users were read once
        await spawner(engine, user, profile="lab", profiles=profiles).start()
    assert engine.calls.count("get_archive") == 2  # alias:1 once, lab:1 once
    assert [c["Labels"].get("gpuspawner.user") for c in engine.containers_by_id.values()] == ["bob", "carol"]


async def test_an_image_without_etc_passwd_is_taken_at_its_users_word(engine):
    s = spawner(engine)  # lab:1 runs as jovyan; the fake engine has no /etc/passwd for it
    await s.start()
    assert s.object_id and engine.calls.count("get_archive") == 1


async def test_a_profile_the_admin_allows_root_starts_a_root_image_others_do_not(engine):
    engine.images["root:1"] = {"Cmd": ["jupyterhub-singleuser"], "User": "00"}
    profiles = [
        {"slug": "root", "display_name": "Root", "image": "root:1", "allow_root": True},
        {"slug": "plain", "display_name": "Plain", "image": "root:1"},
    ]
    s = spawner(engine, profile="root", profiles=profiles)
    await s.start()
    assert s.object_id
    s = spawner(engine, "bob", profile="plain", profiles=profiles)
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.reason == "image_root"
    assert "allow root for this profile (allow_root in c.GPUSpawner.profiles)" in str(e.value)


async def test_image_setting_a_swarm_resource_variable_refused_before_any_gpu(engine):
    engine.images["res:1"] = {
        "Cmd": ["jupyterhub-singleuser"],
        "User": "1000",
        "Env": ["DOCKER_RESOURCE_NVIDIA-GPU=GPU-1"],
    }
    profiles = [{"slug": "res", "display_name": "Res", "image": "res:1", "gpus": 1}]
    s = spawner(engine, profiles=profiles)
    with pytest.raises(SpawnException, match="sets DOCKER_RESOURCE_NVIDIA-GPU in its environment") as e:
        await s.start()
    assert e.value.reason == "image_resource_env"
    assert len(s.shared.ledger.free()) == 2
    assert engine.containers_by_id == {}


async def test_missing_image_is_a_clear_refusal(engine):
    profiles = [{"slug": "x", "display_name": "X", "image": "nowhere:1", "gpus": 1}]
    s = spawner(engine, profiles=profiles, pull_policy="never")
    with pytest.raises(SpawnException, match="not on this host"):
        await s.start()
    assert len(s.shared.ledger.free()) == 2


COURSES = [
    {"slug": "open", "display_name": "Open", "image": "lab:1"},
    {
        "slug": "ml101",
        "display_name": "ML 101",
        "image": "lab:1",
        "gpus": 1,
        "groups": ["ml101", "teachers"],
        "default": True,
        "environment": {"COURSE": "ml101", "EPOCHS": 3},
        "datasets": [{"name": "mnist", "source": "/srv/datasets/mnist"}, {"name": "cifar", "source": "cifar-vol"}],
        "shares": [{"name": "ml101", "source": "/srv/share/ml101", "writable_by": ["teachers"]}],
    },
    {"slug": "cv", "display_name": "CV", "image": "lab:1", "users": ["carol"]},
]


def test_students_see_only_their_courses_profiles_admins_all(engine):
    def slugs(**kw):
        return [p.slug for p in spawner(engine, profiles=COURSES, **kw).user_profiles]

    assert slugs(groups=["ml101"]) == ["open", "ml101"]
    assert slugs(user="carol") == ["open", "cv"]
    assert slugs(user="dave") == ["open"]
    assert slugs(user="root", admin=True) == ["open", "ml101", "cv"]


@pytest.mark.parametrize(
    "options, status, message",
    [
        ({"profile": "cv"}, 403, "profile 'cv' is not available to you"),
        ({"profile": "tpu"}, 400, "unknown profile 'tpu'; choose one of: open, ml101"),
        ({"profile": "ml101", "image": "evil:1"}, 400, "not allowed: image"),
        ({"gpus": 4}, 400, "not allowed: gpus"),
        ({"profile": "open", "environment": {"X": "1"}, "mem_limit": "1T"}, 400, "not allowed: environment, mem_limit"),
        ({"volumes": {"/": "/host"}}, 400, "not allowed: volumes"),
        ({"profile": ["ml101", "cv"]}, 400, "must be a profile's slug"),
        ({"profile": ["ml101"]}, 400, "must be a profile's slug"),
        ({"profile": 3}, 400, "must be a profile's slug"),
        ({"profile": {"slug": "ml101"}}, 400, "must be a profile's slug"),
    ],
    ids=[
        "other-course",
        "unknown",
        "image",
        "gpus",
        "env-and-limits",
        "mounts",
        "two-profiles",
        "a-list",
        "a-number",
        "an-object",
    ],
)
def test_tampering_is_refused(engine, options, status, message):
    s = spawner(engine, profiles=COURSES, groups=["ml101"])
    with pytest.raises(web.HTTPError) as e:
        apply_profile_choice(s, options)
    assert e.value.status_code == status
    assert message in e.value.log_message


def test_the_default_profile_of_the_course(engine):
    s = spawner(engine, profiles=COURSES, groups=["ml101"])
    apply_profile_choice(s, {})
    assert s.profile.slug == "ml101"
    s = spawner(engine, "dave", profiles=COURSES)
    apply_profile_choice(s, {})
    assert s.profile.slug == "open"


async def test_environment_datasets_and_shares(engine):
    student = spawner(engine, "sam", profile="ml101", profiles=COURSES, groups=["ml101"])
    await student.start()
    c = container_of(engine, student)
    assert c["Env"]["COURSE"] == "ml101" and c["Env"]["EPOCHS"] == "3"
    binds = c["HostConfig"]["Binds"]
    assert "/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro" in binds
    assert "cifar-vol:/home/jovyan/datasets/cifar:ro" in binds
    assert "/srv/share/ml101:/home/jovyan/shared/ml101:ro" in binds
    teacher = spawner(engine, "tess", profile="ml101", profiles=COURSES, groups=["teachers"])
    await teacher.start()
    assert "/srv/share/ml101:/home/jovyan/shared/ml101:rw" in container_of(engine, teacher)["HostConfig"]["Binds"]


def test_form_fields_pass_through_to_validation(engine):
    s = spawner(engine, profiles=COURSES)
    assert s.options_from_form({"_xsrf": ["x"], "profile": ["open"]}) == {"profile": "open"}
    assert s.options_from_form({"profile": ["open"], "image": ["evil:1"]}) == {"profile": "open", "image": "evil:1"}


async def test_profiles_file_reloads_and_keeps_the_last_good(engine, tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    path.write_text("- {slug: a, display_name: A, image: 'lab:1'}\n")
    s = spawner(engine, profiles=[], profiles_file=str(path))
    assert [p.slug for p in s.lab_profiles] == ["a"]
    path.write_text(
        "profiles:\n- {slug: a, display_name: A, image: 'lab:1'}\n- {slug: b, display_name: B, image: 'lab:1', gpus: 1}\n"
    )
    assert [p.slug for p in s.lab_profiles] == ["a", "b"]
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', gpus: lots}\n")
    assert [p.slug for p in s.lab_profiles] == ["a", "b"]
    assert "Keeping the last good profiles" in caplog.text and "field 'gpus'" in caplog.text


def test_a_profiles_file_keeps_to_the_admins_limits(engine, tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', gpus: 2}\n")
    assert GPUSpawner().profiles_file_max_gpus == 1
    with pytest.raises(web.HTTPError, match="profile 'a': field 'gpus': asks for 2 GPUs; a profiles file may ask"):
        spawner(engine, profiles=[], profiles_file=str(path))  # the first read: refused, nothing to keep
    reset_hub_state()  # a hub restarted with a higher cap
    s = spawner(engine, profiles=[], profiles_file=str(path), profiles_file_max_gpus=2)
    assert s.lab_profiles[0].gpus == 2
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', allow_root: true}\n")
    assert s.lab_profiles[0].gpus == 2 and not s.lab_profiles[0].allow_root
    assert (
        f"Keeping the last good profiles: {path}: profile 'a': field 'allow_root': only the admin's config"
        " (c.GPUSpawner.profiles) may set it, not a profiles file"
    ) in caplog.text


def test_a_profiles_file_adds_to_the_admins_profiles_and_replaces_none(engine, tmp_path, caplog):
    """The admin's profiles (with what only they may set) come first; the teachers' file adds its own."""
    admins = [{"slug": "pip", "display_name": "Pip", "image": "lab:1", "internet": True, "default": True}]
    path = tmp_path / "profiles.yaml"
    path.write_text("- {slug: ml101, display_name: ML101, image: 'lab:1', gpus: 1}\n")
    s = spawner(engine, profiles=admins, profiles_file=str(path))
    assert [(p.slug, p.internet) for p in s.lab_profiles] == [("pip", True), ("ml101", False)]
    path.write_text("- {slug: pip, display_name: Mine, image: 'lab:1'}\n")  # a teacher's copy of the admin's
    assert [p.slug for p in s.lab_profiles] == ["pip", "ml101"]  # refused: the last good ones stay
    assert "profile 'pip': field 'slug': the admin's config has a profile of this slug" in caplog.text
    path.write_text("- {slug: other, display_name: Other, image: 'lab:1', default: true}\n")
    assert [p.slug for p in s.lab_profiles] == ["pip", "ml101"]
    assert "only one profile may be the default ('pip' is)" in caplog.text


# --- what profiles may mount: c.GPUSpawner.mount_roots and mount_volumes

ROOTS = {"mount_roots": ["/srv/datasets", "/srv/courses"], "mount_volumes": ["course-*"]}


def mounting(field, source):
    return [{"slug": "ml101", "display_name": "ML 101", "image": "lab:1", field: [{"name": "x", "source": source}]}]


@pytest.mark.parametrize("field", ["datasets", "shares"])
@pytest.mark.parametrize(
    "source, refusal",
    [
        ("/", "source '/' is not under the mount roots the admin allows"),
        ("/var/run", "source '/var/run' is not under the mount roots"),
        ("/var/run/docker.sock", "source '/var/run/docker.sock' is not under the mount roots"),
        ("/srv/datasets-evil", "source '/srv/datasets-evil' is not under the mount roots"),
        ("other-vol", "source 'other-vol' is not a volume the admin allows"),
        ("jupyterhub-data", "source 'jupyterhub-data' is not a volume the admin allows"),
    ],
    ids=lambda v: v,
)
def test_a_mount_the_admin_does_not_allow_is_refused(engine, field, source, refusal):
    s = make_spawner(GPUSpawner, engine, profiles=mounting(field, source), **ROOTS)
    with pytest.raises(ProfileError) as e:
        s.lab_profiles
    assert str(e.value).startswith(f"profile 'ml101': field '{field}': x: {refusal}")
    assert "(c.GPUSpawner.mount_" in str(e.value)


@pytest.mark.parametrize("field", ["datasets", "shares"])
@pytest.mark.parametrize("source", ["/srv/datasets", "/srv/courses/ml101", "course-ml101"], ids=lambda v: v)
def test_a_mount_under_a_root_or_matching_a_pattern_is_accepted(engine, field, source):
    (p,) = make_spawner(GPUSpawner, engine, profiles=mounting(field, source), **ROOTS).lab_profiles
    assert [m.source for m in getattr(p, field)] == [source]


def test_by_default_a_profile_mounts_nothing(engine):
    s = make_spawner(GPUSpawner, engine, profiles=mounting("datasets", "/srv/datasets/mnist"))
    assert (s.mount_roots, s.mount_volumes) == ([], [])
    with pytest.raises(ProfileError, match=r"c.GPUSpawner.mount_roots: none, so no host path may be mounted"):
        s.lab_profiles


@pytest.mark.parametrize(
    "trait, value, message",
    [
        ("mount_roots", ["srv/datasets"], "'srv/datasets' must be an absolute host path"),
        ("mount_roots", [""], "'' must be an absolute host path"),
        ("mount_roots", ["/srv/../etc"], "'/srv/../etc' must be an absolute host path, without '..'"),
        ("mount_roots", ["//"], "'//' is the whole host; write '/' itself"),
        ("mount_roots", ["/."], "'/.' is the whole host"),
        ("mount_volumes", [""], "'' must be a volume name or pattern"),
        ("mount_volumes", ["/srv/datasets"], "(host folders go in mount_roots)"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_mount_traits_refuse_what_cannot_be_a_root_or_volume(engine, trait, value, message):
    with pytest.raises(TraitError) as e:
        make_spawner(GPUSpawner, engine, **{trait: value})
    assert f"GPUSpawner.{trait}: " in str(e.value) and message in str(e.value)


def test_mount_roots_are_normalised_and_slash_only_when_written(engine):
    s = make_spawner(GPUSpawner, engine, mount_roots=["/srv/datasets/", "//srv/./courses", "/"])
    assert s.mount_roots == ["/srv/datasets", "/srv/courses", "/"]


def test_a_profiles_file_edit_that_mounts_the_host_keeps_the_last_good(engine, tmp_path, caplog):
    path = tmp_path / "profiles.yaml"
    good = "- {slug: a, display_name: A, image: 'lab:1', datasets: [{name: d, source: /srv/datasets/d}]}\n"
    path.write_text(good)
    s = spawner(engine, profiles=[], profiles_file=str(path), **ROOTS)
    assert [m.source for m in s.lab_profiles[0].datasets] == ["/srv/datasets/d"]
    path.write_text("- {slug: a, display_name: A, image: 'lab:1', datasets: [{name: d, source: /}]}\n")
    assert [m.source for m in s.lab_profiles[0].datasets] == ["/srv/datasets/d"]
    assert (
        "Keeping the last good profiles: "
        f"{path}: profile 'a': field 'datasets': d: source '/' is not under the mount roots the admin allows"
        " (c.GPUSpawner.mount_roots: /srv/datasets, /srv/courses)"
    ) in caplog.text


def test_check_config_refuses_to_start_on_a_mount_the_admin_does_not_allow():
    from traitlets.config import Config

    from gpuspawner.checks import ConfigInvalid, check_config

    c = Config()
    c.GPUSpawner.profiles = mounting("shares", "/var/run")
    c.GPUSpawner.mount_roots = ["/srv/datasets", "/srv/courses"]
    c.GPUSpawner.network_name = "host"
    with pytest.raises(ConfigInvalid) as e:
        check_config(c, prepull=False)
    assert str(e.value) == (
        "gpuspawner: the hub's config is not valid: profile 'ml101': field 'shares': x: source '/var/run'"
        " is not under the mount roots the admin allows (c.GPUSpawner.mount_roots: /srv/datasets, /srv/courses)"
    )
    c.GPUSpawner.mount_roots = ["/var/run"]
    assert [p.shares[0].source for p in check_config(c, prepull=False)] == ["/var/run"]


def test_unpinned_images_refused_at_load_unless_allowed(engine):
    unpinned = [
        {"slug": "x", "display_name": "X", "image": "lab"},
        {"slug": "y", "display_name": "Y", "image": "lab:latest"},
    ]
    with pytest.raises(ProfileError, match="profile 'x': field 'image': image 'lab' has no tag"):
        make_spawner(GPUSpawner, engine, profiles=unpinned).lab_profiles
    allowed = make_spawner(GPUSpawner, engine, profiles=unpinned, allow_unpinned_images=True)
    assert [p.slug for p in allowed.lab_profiles] == ["x", "y"]


async def test_digest_recorded_on_container_and_state(engine):
    s = spawner(engine, profile="gpu")
    await s.start()
    digest = engine.inspect_image("lab:1")["Id"]
    assert container_of(engine, s)["Labels"]["gpuspawner.image-digest"] == digest
    assert s.get_state()["image_digest"] == digest and s.get_state()["image"] == "lab:1"


async def test_unmet_cuda_refused_before_any_gpu(engine):
    engine.images["cuda:12.8"] = {"User": "jovyan", "Env": ["CUDA_VERSION=12.8.0"], "Cmd": ["x"]}
    profiles = [
        {"slug": "new", "display_name": "New CUDA", "image": "cuda:12.8", "gpus": 1},
        {"slug": "cpu", "display_name": "CPU", "image": "cuda:12.8"},
    ]
    s = spawner(engine, profiles=profiles, driver_cuda_version="12.4", profile="new")
    with pytest.raises(SpawnException) as e:
        await s.start()
    assert e.value.reason == "cuda"
    assert "needs CUDA 12.8, but this host's NVIDIA driver supports up to CUDA 12.4" in e.value.message
    assert len(s.shared.ledger.free()) == 2 and engine.containers_by_id == {}
    s = spawner(engine, profiles=profiles, driver_cuda_version="12.4", profile="cpu")
    await s.start()  # no GPU, no driver needed


async def test_a_pull_reports_progress_then_gpus_then_start(engine):
    engine.pullable["big:2026.1"] = {"User": "jovyan", "Cmd": ["jupyterhub-singleuser"]}
    profiles = [{"slug": "big", "display_name": "Big image", "image": "big:2026.1", "gpus": 1}]
    s = spawner(engine, profiles=profiles, prepull_images=False)  # this start does the pull
    await s.start()
    events = []
    async for event in s.progress():
        events.append(event)
        if event["progress"] >= 90:
            break
    messages = [e["message"] for e in events]
    assert messages[0] == "Preparing Big image"
    assert any(m.startswith("Pulling big:2026.1") for m in messages)
    assert "Assigning 1 whole GPU" in messages
    assert "Starting your server with GPU 0 (A100, 80 GiB)" in messages
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 90


async def test_a_failed_pull_is_a_clear_refusal_holding_nothing(engine):
    profiles = [{"slug": "gone", "display_name": "Gone", "image": "gone:1", "gpus": 1}]
    s = spawner(engine, profiles=profiles)
    with pytest.raises(SpawnException, match="Could not pull gone:1: manifest for gone:1 not found") as e:
        await s.start()
    assert e.value.reason == "image_pull"
    assert engine.containers_by_id == {}


async def test_spawn_page_shows_what_cannot_start_now_and_why(engine):
    holder = spawner(engine, "bob", profile="two")
    await holder.start()
    s = make_spawner(GPUSpawner, engine, profiles=PROFILES, gpus=GPUS)
    s.user_options = {"profile": "gpu"}  # the last choice cannot start now
    html = await s.get_options_form()
    assert 'value="cpu" checked' in html
    assert 'value="gpu" disabled required>' in html
    assert "Unavailable now: Needs 1 whole GPU: all 2 A100 GPUs are taken (2/2 in use)." in html


async def test_progress_read_from_before_the_start(engine):
    """The spawn-pending page may ask for progress before start() has begun."""
    import asyncio

    s = spawner(engine, profile="gpu")
    seen = []
    reading = asyncio.Event()

    async def read():
        reading.set()  # then straight into progress(), up to its first wait, before start() runs
        async for event in s.progress():
            seen.append(event["message"])
            if event["progress"] >= 90:
                return

    reader = asyncio.create_task(read())
    await reading.wait()
    await s.start()
    await asyncio.wait_for(reader, 5)
    assert seen[0] == "Preparing GPU" and seen[-1].startswith("Container started")


# --- quotas, through the spawner: its config reaches the policy, its user the requester


async def refused(s) -> SpawnException:
    with pytest.raises(SpawnException) as e:
        await s.start()
    return e.value


async def test_the_per_user_cap_counts_every_named_server(engine):
    first = spawner(engine, "alice", profile="gpu", max_gpus_per_user=1)
    await first.start()
    second = spawner(engine, "alice", profile="gpu", server_name="big", max_gpus_per_user=1)
    e = await refused(second)
    assert (e.reason, e.status_code) == ("user_quota", 403)
    assert "You already hold 1 GPU(s) across your servers, and the limit is 1 per user." in e.message
    assert second.gpu_ids == () and len(engine.containers_by_id) == 1
    bob = spawner(engine, "bob", profile="gpu", max_gpus_per_user=1)
    await bob.start()  # the cap is per user
    await first.stop()
    await bob.stop()
    await second.start()
    assert len(second.gpu_ids) == 1


async def test_a_group_quota_holds_for_the_group_only(engine):
    quota = {"group_gpu_quotas": {"ml101": 1}}
    await spawner(engine, "alice", profile="gpu", groups=["ml101"], **quota).start()
    e = await refused(spawner(engine, "bob", profile="gpu", groups=["ml101", "other"], **quota))
    assert (e.reason, e.status_code) == ("group_quota", 403)
    assert "Your group 'ml101' is using 1 of its 1 GPU(s)." in e.message
    carol = spawner(engine, "carol", profile="gpu", groups=["other"], **quota)
    await carol.start()
    assert len(carol.gpu_ids) == 1


@pytest.mark.parametrize(
    "exempt, admin, starts",
    [(True, True, True), (False, True, False), (True, False, False)],
    ids=["admin-exempt", "exemption-off", "not-an-admin"],
)
async def test_admins_are_exempt_unless_configured_not_to_be(engine, exempt, admin, starts):
    config = {"group_gpu_quotas": {"ml101": 1}, "max_gpus_per_user": 1, "quota_exempt_admins": exempt}
    await spawner(engine, "alice", profile="gpu", groups=["ml101"], **config).start()
    root = spawner(engine, "root", profile="gpu", groups=["ml101"], admin=admin, **config)
    if starts:
        await root.start()
        named = spawner(engine, "root", profile="gpu", server_name="more", admin=admin, **config)
        with pytest.raises(SpawnException) as e:  # exempt from quotas, not from the GPUs running out
            await named.start()
        assert e.value.reason == "no_gpu"
    else:
        assert (await refused(root)).reason == "group_quota"


async def test_a_restarted_hub_keeps_group_quotas_from_the_labels(engine):
    group = "cn=ml,ou=courses"  # an LDAP group: a comma in its name
    quota = {"group_gpu_quotas": {group: 1}}
    alice = spawner(engine, "alice", profile="gpu", groups=[group], **quota)
    await alice.start()
    state = alice.get_state()
    reset_hub_state()  # the hub restarts; alice's container keeps running

    again = spawner(engine, "alice", groups=[group], **quota)
    again.load_state(state)
    assert await again.poll() is None  # the first poll rebuilds the ledger from the labels
    held = again.shared.ledger.assignment(again.holder)
    assert held.ids == ("GPU-0000",) and held.groups == frozenset({group})
    e = await refused(spawner(engine, "bob", profile="gpu", groups=[group], **quota))
    assert e.reason == "group_quota" and f"Your group '{group}' is using 1 of its 1 GPU(s)." in e.message
    carol = spawner(engine, "carol", profile="gpu", groups=["cn=cv,ou=courses"], **quota)
    await carol.start()
    assert carol.gpu_ids == ("GPU-1111",)


# --- CPU and memory caps, and the hub-wide default limits

CAPPED = [
    {"slug": "cpu", "display_name": "CPU only", "image": "lab:1", "mem_limit": "2G", "cpu_limit": 1},
    {"slug": "dl", "display_name": "Deep learning", "image": "lab:1", "gpus": 1, "mem_limit": "4G", "cpu_limit": 2},
    {"slug": "plain", "display_name": "Plain", "image": "lab:1"},  # no limits: the hub-wide defaults
]


async def test_a_profile_without_limits_gets_the_hub_defaults_and_counts_them(engine):
    s = spawner(engine, profile="plain", profiles=CAPPED)
    await s.start()
    host = container_of(engine, s)["HostConfig"]
    assert host["Memory"] == 4 * 1024**3 and host["CpuQuota"] == 2 * host["CpuPeriod"]
    labels = container_of(engine, s)["Labels"]
    assert labels["gpuspawner.mem-limit"] == str(4 * 1024**3) and labels["gpuspawner.cpu-limit"] == "2"
    assert s.shared.ledger.usage.of_user("alice").memory == 4 * 1024**3
    set_by_admin = spawner(engine, "bob", profile="plain", profiles=CAPPED, mem_limit="1G", cpu_limit=0.5)
    await set_by_admin.start()
    assert container_of(engine, set_by_admin)["HostConfig"]["Memory"] == 1024**3


async def test_a_user_at_their_memory_cap_is_refused_at_once_holding_nothing(engine):
    caps = {"max_memory_per_user": "8G", "profiles": CAPPED}
    await spawner(engine, "mia", profile="dl", **caps).start()
    await spawner(engine, "mia", profile="cpu", server_name="notes", **caps).start()
    third = spawner(engine, "mia", profile="dl", server_name="train", **caps)
    engine.calls.clear()
    e = await refused(third)
    assert (e.reason, e.status_code) == ("user_memory_quota", 403)
    assert e.message == (
        "Deep learning: Your servers use 6 GiB of your 8 GiB of memory, and this one needs 4 GiB (2 GiB left)."
        " Stop one of your servers, or choose a smaller profile. Can start now: CPU only (1 CPU, 2 GiB RAM)."
    )
    assert engine.calls == []  # no pull, no inspection, no container
    assert third.shared.ledger.resources_held(third.holder).memory == 0 and len(engine.containers_by_id) == 2
    # The spawn page says why, on the card.
    html = await third.get_options_form()
    assert 'value="dl" disabled' in " ".join(html.split())
    assert "Unavailable now: Your servers use 6 GiB of your 8 GiB of memory" in html
    assert "Plain" in html and "2 CPUs, 4 GiB RAM" in html  # the hub-wide limits, said on its card
    notes = spawner(engine, "mia", profile="cpu", server_name="notes", **caps)
    ids = [c["Id"] for c in engine.containers_by_id.values() if c["Labels"]["gpuspawner.server"] == "notes"]
    notes.load_state({"object_id": ids[0], "profile": "cpu"})
    await notes.stop()
    await third.start()  # room again


async def test_cpu_and_group_caps_through_the_spawner(engine):
    caps = {"max_cpus_per_user": 2, "group_memory_quotas": {"ml101": "6G"}, "profiles": CAPPED}
    await spawner(engine, "ann", profile="dl", groups=["ml101"], **caps).start()
    e = await refused(spawner(engine, "ann", profile="cpu", server_name="b", groups=["ml101"], **caps))
    assert e.reason == "user_cpu_quota" and "Your servers use 2 of your 2 CPUs" in e.message
    e = await refused(spawner(engine, "bob", profile="plain", groups=["ml101"], **caps))
    assert e.reason == "group_memory_quota" and "Your group 'ml101' is using 4 GiB of its 6 GiB of memory" in e.message
    await spawner(engine, "bob", profile="cpu", groups=["ml101"], **caps).start()  # 2 GiB fits
    await spawner(engine, "root", profile="plain", groups=["ml101"], admin=True, **caps).start()  # exempt


async def test_a_restarted_hub_counts_memory_from_the_labels(engine):
    caps = {"max_memory_per_user": "6G", "profiles": CAPPED}
    mia = spawner(engine, "mia", profile="plain", **caps)
    await mia.start()
    state = mia.get_state()
    reset_hub_state()  # the hub restarts; the container keeps running

    again = spawner(engine, "mia", **caps)
    again.load_state(state)
    assert await again.poll() is None  # the first poll rebuilds the ledger from the labels
    assert again.shared.ledger.usage.of_user("mia").memory == 4 * 1024**3
    e = await refused(spawner(engine, "mia", profile="dl", server_name="b", **caps))
    assert e.reason == "user_memory_quota" and "Your servers use 4 GiB of your 6 GiB of memory" in e.message


@pytest.mark.parametrize("section", ["Spawner", "DockerSpawner", "GPUSpawner"])
def test_the_default_limits_are_set_as_dockerspawner_s(section):
    from traitlets.config import Config

    assert (GPUSpawner().mem_limit, GPUSpawner().cpu_limit) == (4 * 1024**3, 2)
    config = Config()
    getattr(config, section).mem_limit = "1G"
    getattr(config, section).cpu_limit = None
    s = GPUSpawner(config=config)
    assert (s.mem_limit, s.cpu_limit) == (1024**3, None)


def test_memory_quotas_are_sizes():
    s = make_spawner(GPUSpawner, FakeDocker(), group_memory_quotas={"ml101": "64G", "cv": 1024})
    assert s.group_memory_quotas == {"ml101": 64 * 1024**3, "cv": 1024}
    assert s.policy.resource_caps.group_memory == {"ml101": 64 * 1024**3, "cv": 1024}
    with pytest.raises(TraitError, match="group_memory_quotas: 'lots' is not a byte size"):
        make_spawner(GPUSpawner, FakeDocker(), group_memory_quotas={"ml101": "lots"})


async def test_a_missing_lab_network_refuses_the_spawn_before_any_container(engine):
    engine.networks = set()
    s = spawner(engine, profile="gpu")
    with pytest.raises(SpawnException, match="The servers' network 'gpuspawner-lab' does not exist .*add_lab_network"):
        await s.start()
    assert not engine.containers_by_id
    assert s.shared.ledger.assignment(s.holder) is None  # nothing held


async def test_an_internet_profile_joins_the_labs_internet_network(engine):
    profiles = [{"slug": "pip", "display_name": "Pip", "image": "lab:1", "internet": True}]
    s = spawner(engine, profile="pip", profiles=profiles)
    ip, port = await s.start()
    c = container_of(engine, s)
    assert c["HostConfig"]["NetworkMode"] == "gpuspawner-lab-internet"
    assert (ip, port) == (c["NetworkSettings"]["Networks"]["gpuspawner-lab-internet"]["IPAddress"], 8888)
    engine.networks.discard("gpuspawner-lab-internet")
    other = spawner(engine, user="bob", profile="pip", profiles=profiles)
    other.shared.networks_seen.clear()
    with pytest.raises(SpawnException, match="'gpuspawner-lab-internet' does not exist"):
        await other.start()


async def test_a_link_planted_inside_a_root_is_refused_at_spawn(engine, tmp_path):
    """A teacher who may write a share plants ``host -> /`` in it; a profile naming ``…/host`` loads
    (its path is under the root as written) but never mounts the host's ``/``."""
    courses = tmp_path / "courses"
    (courses / "ml101" / "data").mkdir(parents=True)
    (courses / "ml101" / "host").symlink_to("/")
    (courses / "ml101" / "inside").symlink_to(courses / "ml101" / "data")  # a link within the root is fine
    profiles = [
        {
            "slug": "ok",
            "display_name": "OK",
            "image": "lab:1",
            "datasets": [{"name": "d", "source": f"{courses}/ml101/inside"}],
        },
        {
            "slug": "bad",
            "display_name": "Bad",
            "image": "lab:1",
            "datasets": [{"name": "d", "source": f"{courses}/ml101/host"}],
        },
    ]
    good = spawner(engine, profile="ok", profiles=profiles, mount_roots=[str(courses)])
    await good.start()
    bad = spawner(engine, user="eve", profile="bad", profiles=profiles, mount_roots=[str(courses)])
    with pytest.raises(
        SpawnException,
        match=r"Bad cannot start: its dataset 'd': source '.*/host' leads through a symbolic link to '/'",
    ):
        await bad.start()
    assert len(engine.containers_by_id) == 1  # only the good one


def test_10000_refused_spawns_leave_a_few_merged_records(engine, tmp_path):
    """10,000 refusals of 20 students (a REST loop each, within one window), through the
    spawner's own recording: 20 records when they happen, 20 more when the window closes
    (the hub's exit here), under 16 KB in all, where one line a refusal made about 1.7 MB."""
    denials = tmp_path / "denials.jsonl"
    students = [spawner(engine, f"student{n}", profile="gpu", denials_file=str(denials)) for n in range(20)]
    gpu = students[0].choose_profile("gpu")
    for n in range(10_000):
        students[n % 20]._record_denial(gpu, "no_gpu", "GPU: Needs 1 whole GPU: all 2 A100 GPUs are taken.")
    assert len(denials.read_text().splitlines()) == 20  # each student's first, at once
    DenialLog.flush_all()  # what the hub's exit does
    records = [json.loads(line) for line in denials.read_text().splitlines()]
    assert len(records) == 40 and sum(r["count"] for r in records) == 10_000
    assert {r["user"] for r in records} == {f"student{n}" for n in range(20)}
    assert denials.stat().st_size < 16 * 1024, denials.stat().st_size


async def test_a_server_that_exits_before_it_answers_fails_the_spawn_at_once_holding_nothing(engine):
    engine.exit_on_start = 3
    engine.log = b"starting\n" + b"".join(b"line %d\n" % i for i in range(20)) + b"ImportError: no <module>\n"
    s = spawner(engine, profile="two")
    with pytest.raises(SpawnException) as raised:
        await s.start()
    e = raised.value
    assert e.reason == "early_exit" and e.status_code == 424  # not 500: nothing in the hub failed
    assert "exited with status 3" in e.jupyterhub_message and "before it answered" in e.jupyterhub_message
    assert e.jupyterhub_message.splitlines()[-2] == "ImportError: no <module>"  # then what to do
    assert "Its command: jupyterhub-singleuser." in e.jupyterhub_message
    assert "line 8" not in e.jupyterhub_message and "line 9" in e.jupyterhub_message  # the last 12 lines
    assert "<pre>" in e.jupyterhub_html_message and "no &lt;module&gt;" in e.jupyterhub_html_message
    assert engine.containers_by_id == {}
    assert len(s.shared.ledger.free()) == 2 and s.shared.starting == set()


@pytest.mark.parametrize(
    "processes, command",
    [
        (["sleep infinity"], "sleep infinity"),
        (["/sbin/docker-init -- python3", "python3"], "python3"),  # docker run --init: the init tells nothing
    ],
    ids=["sleep", "repl-under-init"],
)
async def test_a_server_whose_processes_never_serve_fails_at_once_holding_nothing(engine, processes, command):
    """(Which processes may serve, and so are left to http_timeout: tests/test_startup.py.)"""
    engine.processes = processes
    engine.log = b"Python 3.12.3\n"
    s = spawner(engine, profile="gpu", http_timeout=30)
    s.start_check_interval = s.process_check_interval = 0.05

    async def silent(ip, port):
        return False

    s._server_answers = silent
    with pytest.raises(SpawnException) as raised:
        await s.start()
    e = raised.value
    assert (e.reason, e.status_code) == ("not_a_server", 424)
    assert e.jupyterhub_message.startswith(f"Your server's command, {command}, is not a Jupyter server")
    assert "Python 3.12.3" in e.jupyterhub_message and 'CMD ["jupyterhub-singleuser"]' in e.jupyterhub_message
    assert e.jupyterhub_html_message.startswith(f"<p>Your server&#x27;s command, {command}, is not")
    assert engine.containers_by_id == {} and len(s.shared.ledger.free()) == 2 and s.shared.starting == set()


async def test_a_server_answers_when_it_answers_http_as_jupyterhubs_wait_asks(engine):
    """The look JupyterHub's own wait makes (``<url>api``, any status below 500), not a connection: a
    port that takes connections and says nothing (Docker's proxy of a published port, a server that
    opened its port and died) must not end the watch, or its death would be JupyterHub's to find."""
    from aiohttp import web as aioweb

    status = {"now": 404}

    async def api(request):
        return aioweb.Response(status=status["now"])

    app = aioweb.Application()
    app.router.add_get("/api", api)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    mute = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # accepts, never answers
    s = spawner(engine, profile="gpu")
    s.answer_timeout = 0.2
    try:
        assert await GPUSpawner._server_answers(s, "127.0.0.1", port)  # 404: up, as for JupyterHub
        status["now"] = 503
        assert not await GPUSpawner._server_answers(s, "127.0.0.1", port)
        assert not await GPUSpawner._server_answers(s, "127.0.0.1", mute.sockets[0].getsockname()[1])
        assert not await GPUSpawner._server_answers(s, "", port)  # an exited container has no address
    finally:
        mute.close()
        await runner.cleanup()


async def test_a_server_that_never_answers_fails_after_http_timeout_with_its_log(engine):
    engine.log = b"Waiting for the database...\n"
    s = spawner(engine, profile="gpu", http_timeout=1)
    s.start_check_interval = 0.05

    async def silent(ip, port):
        return False

    s._server_answers = silent
    with pytest.raises(SpawnException, match="did not answer within 1 s. The last lines of its log:\nWaiting"):
        await s.start()
    assert engine.containers_by_id == {} and len(s.shared.ledger.free()) == 2

    # With start_timeout nearly spent (a long pull), the rest of the wait is JupyterHub's.
    s = spawner(engine, profile="gpu", http_timeout=30, start_timeout=2)
    s._server_answers = silent
    s.start_check_interval = 0.05
    await s.start()
    assert s.gpu_ids and await s.poll() is None
    # It dies while JupyterHub waits: its units come free, but JupyterHub's poll hears nothing, as its REST
    # spawn handler would then fail with HTTP 500 (InvalidStateError); its wait fails the spawn.
    s._waiting_for_response = True  # as JupyterHub sets it when start() returns
    engine.crash(s.object_id, 2)
    assert await s.poll() is None
    assert engine.containers_by_id == {} and len(s.shared.ledger.free()) == 2
    s._waiting_for_response = False  # its wait ended
    assert await s.poll() == 0


async def test_units_of_a_container_stopped_behind_the_hubs_back_are_freed_at_the_next_check(engine):
    alice = spawner(engine, "alice", profile="two")
    await alice.start()
    reset_hub_state()  # the hub restarts and no longer knows alice's server; her container runs
    bob = spawner(engine, "bob", profile="gpu", ledger_sync_interval=0)
    with pytest.raises(SpawnException):  # adopted from the labels: no GPU given twice
        await bob.start()
    engine.stop(alice.object_id)  # the culler's reconciler stops it
    engine.remove_container(alice.object_id)
    await bob.start()
    assert bob.gpu_ids == ("GPU-0000",)


async def test_the_ledger_check_keeps_a_server_that_is_starting(engine):
    s = spawner(engine, "alice", profile="gpu", ledger_sync_interval=0)
    ledger = await s.ledger()
    ledger.assign("carol/", s.profile.gpu_request, s.requester)  # decided; her container not made yet
    s.shared.starting.add("carol/")
    await s.ledger()
    assert ledger.assignment("carol/") is not None
    s.shared.starting.discard("carol/")  # her start ended, and no container runs
    await s.ledger()
    assert ledger.assignment("carol/") is None


async def test_a_model_named_gpu_is_not_said_twice(engine):
    """A simulated inventory's model, "simulated GPU": "3 of 4 simulated GPUs", never "simulated GPU GPUs"."""
    gpus = [{"index": i, "uuid": f"GPU-{i}", "name": "simulated GPU", "memory": "16G"} for i in range(2)]
    profiles = PROFILES + [{"slug": "sh", "display_name": "Shared", "image": "lab:1", "shared_gpu": True}]
    s = make_spawner(GPUSpawner, engine, profiles=profiles, gpus=gpus)
    s.user_options = {}
    html = await s.get_options_form()
    assert "2 of 2 simulated GPUs free now" in html and "8 free slots now on 2 shared simulated GPUs" in html
    assert "GPU GPU" not in html

"""container.describe: a server's container from what the lab decided, read directly (no Docker, no spawner)."""

from __future__ import annotations

import dataclasses

import pytest

from gpuspawner import labels as label
from gpuspawner.container import (
    NVIDIA_DEVICE_MOUNTS,
    ContainerMount,
    HubSettings,
    ImageFacts,
    Limits,
    culling_rules,
    describe,
    image_home,
)
from gpuspawner.culler.policy import CullRules
from gpuspawner.profiles import parse_profiles

GiB = 1024**3
HUB = HubSettings(
    limits=Limits(mem_limit=8 * GiB, cpu_limit=4.0, shm_size=GiB),
    home_volume="jupyterhub-user-ann",
    culling=CullRules(gpu_idle_timeout=1800, max_runtime=14400, jupyter_activity_grace=0),
)
IMAGE = ImageFacts(home="/home/jovyan", digest="sha256:" + "a" * 64)


def profile(**fields):
    (p,) = parse_profiles([{"slug": "ml101", "display_name": "ML 101", "image": "lab:1", **fields}])
    return p


GPU = profile(gpus=1)
COURSE = profile(
    gpus=1,
    environment={"COURSE": "ml101"},
    datasets=[{"name": "mnist", "source": "/srv/datasets/mnist"}],
    shares=[{"name": "ml101", "source": "/srv/share/ml101", "writable_by": ["teachers"]}],
)


def server(p=GPU, hub=HUB, **kw):
    kw.setdefault("user", "ann")
    kw.setdefault("image", IMAGE)
    return describe(p, hub, **kw)


# --- labels: only labels.server_labels writes them


@pytest.mark.parametrize(
    "kw, expected",
    [
        (
            {"units": ("GPU-a", "GPU-b"), "groups": {"ml101"}},
            {
                label.GPUS: '["GPU-a","GPU-b"]',
                label.SHARED: "",
                label.GROUPS: '["ml101"]',
                label.GPU_IDLE_TIMEOUT: "1800",
                label.MAX_RUNTIME: "14400",
                label.JUPYTER_ACTIVITY_GRACE: "0",
            },
        ),
        ({"units": ("GPU-a",), "shared": True}, {label.GPUS: '["GPU-a"]', label.SHARED: "1", label.GROUPS: ""}),
        ({}, {label.GPUS: "", label.SHARED: "", label.GROUPS: ""}),
        ({"shared": True}, {label.SHARED: ""}),  # no unit, no slot
        ({"units": ("GPU-a",), "units_by_swarm": True}, {label.SHARED: "", label.GPU_IDLE_TIMEOUT: "1800"}),
    ],
    ids=["whole-gpus", "shared-slot", "no-gpu", "shared-without-units", "swarm-picks-units"],
)
def test_labels(kw, expected):
    labels = server(**kw).labels
    assert {name: labels.get(name) for name in expected} == expected
    assert (labels[label.USER], labels[label.SERVER], labels[label.PROFILE]) == ("ann", "", "ml101")
    assert labels[label.IMAGE_DIGEST] == IMAGE.digest
    assert (label.GPU_IDLE_TIMEOUT in labels) == bool(kw.get("units"))  # the culler's rules: GPU servers only
    assert (label.GPUS in labels) == (not kw.get("units_by_swarm"))  # Swarm's units are read from its task


@pytest.mark.parametrize(
    "groups, server_name",
    [({"cn=ml,ou=courses", "ml101"}, ""), ({"a,b", "c"}, "big")],
    ids=["ldap-group", "named-server"],
)
def test_labels_read_back_as_written(groups, server_name):
    written = server(units=("GPU-a",), groups=groups, server=server_name).labels
    record = label.read_server(written)
    assert record.groups == frozenset(groups)
    assert (record.user, record.server, record.unit_ids) == ("ann", server_name, ("GPU-a",))
    assert record.rules == CullRules(1800, 14400, 0)


def test_a_profiles_culling_rules_win():
    p = profile(gpus=1, gpu_idle_timeout="10m", max_runtime=0)
    assert culling_rules(p, HUB.culling) == CullRules(600, 0, 0)
    assert culling_rules(None, HUB.culling) == HUB.culling
    assert server(p, units=("GPU-a",)).labels[label.GPU_IDLE_TIMEOUT] == "600"


# --- environment


@pytest.mark.parametrize(
    "kw, base, expected",
    [
        ({"units": ("GPU-a", "GPU-b")}, {}, {"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}),
        ({}, {}, {"NVIDIA_VISIBLE_DEVICES": "void", "NVIDIA_DRIVER_CAPABILITIES": None}),
        ({"units": ("GPU-a",), "units_by_swarm": True}, {}, {"NVIDIA_VISIBLE_DEVICES": "void", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}),
        ({}, {"NVIDIA_VISIBLE_DEVICES": "all"}, {"NVIDIA_VISIBLE_DEVICES": "void"}),
        ({"units": ("GPU-a",)}, {"NVIDIA_DRIVER_CAPABILITIES": "all"}, {"NVIDIA_DRIVER_CAPABILITIES": "all"}),
        ({}, {"JUPYTERHUB_API_TOKEN": "t", "COURSE": "old"}, {"JUPYTERHUB_API_TOKEN": "t", "COURSE": "ml101"}),
    ],
    ids=["gpus-by-id", "no-gpu-void", "swarm-void", "image-all-overridden", "admin-capabilities-kept", "profile-wins"],
)  # fmt: skip
def test_environment(kw, base, expected):
    env = server(COURSE, base_environment=base, **kw).environment
    assert {name: env.get(name) for name in expected} == expected
    assert env["GPUSPAWNER_PROFILE"] == "ml101" and env["COURSE"] == "ml101"


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({}, {}),
        ({"blank_kinds": ("NVIDIA-GPU", "NVIDIA-MIG-1g.10gb")}, {"DOCKER_RESOURCE_NVIDIA-GPU": "", "DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB": ""}),
        ({"units": ("GPU-a",), "units_by_swarm": True, "blank_kinds": ("NVIDIA-MIG-1g.10gb",)}, {"DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB": ""}),
    ],
    ids=["none-named", "no-gpu-every-kind-blank", "gpu-other-kinds-blank"],
)  # fmt: skip
def test_only_swarm_names_units_in_docker_resource_variables(kw, expected):
    """A profile's or the hub's DOCKER_RESOURCE_* never reach the container; kinds not given are empty."""
    # (profiles.py refuses such a name; a profile made in code, or an admin's Spawner.environment, may not)
    p = dataclasses.replace(GPU, environment={"DOCKER_RESOURCE_NVIDIA-GPU": "GPU-other", "docker_resource_x": "1"})
    base = {"DOCKER_RESOURCE_NVIDIA-MIG-1G.10GB": "MIG-other", "JUPYTERHUB_API_TOKEN": "t"}
    env = server(p, base_environment=base, **kw).environment
    assert {k: v for k, v in env.items() if k.upper().startswith("DOCKER_RESOURCE_")} == expected
    assert env["JUPYTERHUB_API_TOKEN"] == "t"


# --- mounts


def binds(c):
    return [m.bind for m in c.mounts]


@pytest.mark.parametrize(
    "kw, hub, expected",
    [
        (
            {"groups": {"ml101"}},
            HUB,
            [
                "jupyterhub-user-ann:/home/jovyan:rw",
                "/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro",
                "/srv/share/ml101:/home/jovyan/shared/ml101:ro",
            ],
        ),
        ({"groups": {"teachers"}}, HUB, ["jupyterhub-user-ann:/home/jovyan:rw", "/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro", "/srv/share/ml101:/home/jovyan/shared/ml101:rw"]),
        (
            {"units": ("GPU-a", "GPU-b")},
            HUB,
            [
                "jupyterhub-user-ann:/home/jovyan:rw",
                "/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro",
                "/srv/share/ml101:/home/jovyan/shared/ml101:ro",
                f"/dev/null:{NVIDIA_DEVICE_MOUNTS}/GPU-a:ro",
                f"/dev/null:{NVIDIA_DEVICE_MOUNTS}/GPU-b:ro",
            ],
        ),
        (
            {"units": ("GPU-a",)},
            dataclasses.replace(HUB, device_list_as_volume_mounts=False, home_volume=""),
            ["/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro", "/srv/share/ml101:/home/jovyan/shared/ml101:ro"],
        ),
        (
            {"units": ("GPU-a",), "units_by_swarm": True},
            dataclasses.replace(HUB, volumes={"/srv/homes/ann": {"bind": "/home/jovyan", "mode": "z"}}),
            [
                "/srv/homes/ann:/home/jovyan:z",
                "/srv/datasets/mnist:/home/jovyan/datasets/mnist:ro",
                "/srv/share/ml101:/home/jovyan/shared/ml101:ro",
            ],
        ),
    ],
    ids=["student", "teacher-writes-the-share", "device-list", "no-device-list-no-home", "admin-home-wins-swarm"],
)  # fmt: skip
def test_mounts(kw, hub, expected):
    assert binds(server(COURSE, hub, **kw)) == expected


def test_mounts_follow_the_image_home():
    c = server(COURSE, image=ImageFacts(home="/workspace"))
    assert binds(c)[:2] == ["jupyterhub-user-ann:/workspace:rw", "/srv/datasets/mnist:/workspace/datasets/mnist:ro"]
    assert image_home({}) == "/home/jovyan"
    assert ContainerMount("v", "/x", "ro").read_only and not ContainerMount("v", "/x").read_only


# --- limits, hardening, devices


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, Limits(8 * GiB, 4.0, GiB)),
        ({"mem_limit": "2G", "cpu_limit": 1, "shm_size": "4G"}, Limits(2 * GiB, 1.0, 4 * GiB)),
        ({"shm_size": "2G"}, Limits(8 * GiB, 4.0, 2 * GiB)),
    ],
    ids=["hub-wide", "profile-overrides-all", "profile-overrides-shm"],
)
def test_limits(fields, expected):
    assert server(profile(**fields)).limits == expected
    assert server(profile(**fields), dataclasses.replace(HUB, limits=Limits())).limits == Limits.of(
        profile(**fields), Limits()
    )


@pytest.mark.parametrize(
    "hub, expected",
    [
        (HUB, (True, ("ALL",), 4096)),
        (dataclasses.replace(HUB, no_new_privileges=False, cap_drop=(), pids_limit=0), (False, (), 0)),
    ],
    ids=["hardened-by-default", "loosened-explicitly"],
)
def test_hardening(hub, expected):
    c = server(hub=hub)
    assert (c.no_new_privileges, c.cap_drop, c.pids_limit) == expected


@pytest.mark.parametrize(
    "kw, devices",
    [
        ({"units": ("GPU-a", "MIG-b")}, ("GPU-a", "MIG-b")),
        ({}, ()),
        ({"units": ("GPU-a",), "units_by_swarm": True}, ()),
    ],
    ids=["docker-by-id", "none", "swarm-picks"],
)
def test_devices(kw, devices):
    assert server(**kw).devices == devices


def test_the_description_is_frozen():
    c = server(units=("GPU-a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.devices = ("GPU-b",)
    with pytest.raises(TypeError):
        c.labels[label.GPUS] = "GPU-b"
    with pytest.raises(TypeError):
        c.environment["NVIDIA_VISIBLE_DEVICES"] = "all"


# --- what the image says


@pytest.mark.parametrize(
    "config, home_path, expected",
    [
        ({"Env": ["HOME=/home/lab"], "User": "1000"}, "", ImageFacts("/home/lab", "sha256:" + "b" * 64, False)),
        ({"WorkingDir": "/workspace", "User": "jovyan"}, "", ImageFacts("/workspace", "sha256:" + "b" * 64, False)),
        ({"WorkingDir": "/", "User": ""}, "", ImageFacts("/home/jovyan", "sha256:" + "b" * 64, True)),
        ({"Env": ["HOME=/root"], "User": "00:0"}, "/home/me", ImageFacts("/home/me", "sha256:" + "b" * 64, True)),
        ({"User": "root"}, "", ImageFacts("/home/jovyan", "sha256:" + "b" * 64, True)),
        (
            {"Env": ["DOCKER_RESOURCE_NVIDIA-GPU=GPU-x", "docker_resource_ssd=1", "PATH=/bin"], "User": "1000"},
            "",
            ImageFacts(
                "/home/jovyan", "sha256:" + "b" * 64, False, ("DOCKER_RESOURCE_NVIDIA-GPU", "docker_resource_ssd")
            ),
        ),
    ],
    ids=["home-env", "workdir", "default-home-no-user", "uid-00-and-home-path", "root", "resource-variables"],
)
def test_image_facts(config, home_path, expected):
    inspect = {"Id": "sha256:" + "b" * 64, "Config": config}
    assert ImageFacts.of(inspect, "lab:1", home_path) == expected

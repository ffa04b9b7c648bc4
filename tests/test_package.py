"""The public surface: what admins import and name in their config."""

from importlib.metadata import entry_points

from dockerspawner import DockerSpawner

import gpuspawner

from .isolation import import_without_heavy


def test_exports():
    assert gpuspawner.__all__ == ["GPUSpawner", "__version__", "check_config"]
    assert issubclass(gpuspawner.GPUSpawner, DockerSpawner)


def test_spawner_entry_point_is_gpu():
    (ep,) = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == "gpu"]
    assert ep.load() is gpuspawner.GPUSpawner


def test_default_config_loads_and_validates():
    """The top-level jupyterhub_config.py is valid config for GPUSpawner."""
    from pathlib import Path

    from traitlets.config import PyFileConfigLoader

    root = Path(__file__).resolve().parent.parent
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(root)).load_config()
    assert config.JupyterHub.spawner_class == "gpu"
    spawner = gpuspawner.GPUSpawner(config=config)
    slugs = [p.slug for p in spawner.lab_profiles]
    assert slugs == ["cpu", "gpu", "shared"]
    assert spawner.lab_profiles[1].gpus == 1
    assert len(spawner.gpus) >= 1


def test_check_config_stops_the_hub_naming_profile_and_field():
    import pytest
    from traitlets.config import Config

    from gpuspawner.checks import ConfigInvalid

    c = Config()
    c.GPUSpawner.profiles = [{"slug": "ml101", "display_name": "ML", "image": "lab:latest"}]
    with pytest.raises(ConfigInvalid, match="profile 'ml101': field 'image': image 'lab:latest' uses the tag 'latest'"):
        gpuspawner.check_config(c, prepull=False)
    c.GPUSpawner.profiles = [{"slug": "ml101", "display_name": "ML", "image": "lab:1", "gpus": "two"}]
    with pytest.raises(ConfigInvalid, match="profile 'ml101': field 'gpus'"):
        gpuspawner.check_config(c, prepull=False)
    c.GPUSpawner.profiles = [{"slug": "ml101", "display_name": "ML", "image": "lab:1"}]
    c.GPUSpawner.gpus = [{"index": 0}]
    with pytest.raises(ConfigInvalid, match="missing field"):
        gpuspawner.check_config(c, prepull=False)
    c.GPUSpawner.gpus = []
    # Servers on the lab network (the default) cannot reach a hub's API on loopback.
    with pytest.raises(ConfigInvalid, match="the hub's API on 127.0.0.1 cannot be reached. Call .*add_lab_network"):
        gpuspawner.check_config(c, prepull=False)
    from gpuspawner.lab_network import add_lab_network

    add_lab_network(c)  # outside a starting hub: settings only, no network made
    assert c.JupyterHub.hub_ip == "10.213.0.1" and c.GPUSpawner.lab_network["name"] == "gpuspawner-lab"
    assert [p.slug for p in gpuspawner.check_config(c, prepull=False)] == ["ml101"]
    host = Config()
    host.GPUSpawner.network_name = "host"  # the opt-in: servers on 127.0.0.1 of the host
    assert [p.slug for p in gpuspawner.check_config(host, prepull=False)] == ["default"]


def test_check_config_warns_of_a_profile_bigger_than_a_cap(caplog):
    from traitlets.config import Config

    c = Config()
    c.GPUSpawner.network_name = "host"
    c.GPUSpawner.max_memory_per_user = "8G"
    c.GPUSpawner.profiles = [
        {"slug": "huge", "display_name": "Huge", "image": "lab:1", "mem_limit": "16G"},
        {"slug": "plain", "display_name": "Plain", "image": "lab:1"},  # the default 4G fits
    ]
    with caplog.at_level("WARNING"):
        gpuspawner.check_config(c, prepull=False)
    warned = [r.getMessage() for r in caplog.records if "only exempt admins" in r.getMessage()]
    assert warned == [
        "gpuspawner: profile 'huge' needs 16 GiB of memory, over max_memory_per_user: only exempt admins can start it"
    ]


LIGHT = [
    "gpuspawner",
    "gpuspawner.gpus.nvml",
    "gpuspawner.gpus.allocation",
    "gpuspawner.culler.policy",
    "gpuspawner.culler.usage",
    "gpuspawner.labels",
    "gpuspawner.container",
    "gpuspawner.images",
]


def test_the_gpu_seam_the_core_and_the_culling_rules_import_light():
    """They run on a GPU machine that has only nvidia-ml-py: none of the hub's packages may load."""
    done = import_without_heavy(*LIGHT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_spawner_loads_on_first_use():
    import subprocess
    import sys

    script = "import sys, gpuspawner; assert 'dockerspawner' not in sys.modules; gpuspawner.GPUSpawner; print('dockerspawner' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "True", done.stderr

"""gpuspawner.config: the hub's config, read once for the command, the dashboard and the culler.

How a config file is read (overrides, foreign spawners, broken files) is tested
through the command in ``test_cli.py``; here, what the services and the engine add.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
from traitlets import Unicode
from traitlets.config import Application

from gpuspawner.config import ConfigError, HubConfig, engine_where, load_hub_config, load_service_config


class Service(Application):
    """A hub-managed service as the dashboard and the culler are: ``-f`` names the hub's config."""

    hub_config = Unicode("jupyterhub_config.py").tag(config=True)
    aliases = {"f": "Service.hub_config"}


@pytest.fixture
def service():
    yield Service
    Service.clear_instance()


def write_config(tmp_path, body=""):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text('c = get_config()  # noqa\nc.JupyterHub.spawner_class = "gpu"\n' + textwrap.dedent(body))
    return path


def test_a_service_reads_the_config_it_is_given(tmp_path, service):
    path = write_config(tmp_path, "c.GPUSpawner.shared_gpu_users = 3\n")
    app = service()
    app.initialize(["-f", str(path)])
    hub = load_service_config(app, app.hub_config)
    assert isinstance(hub, HubConfig) and hub.config_file == str(path)
    assert hub.spawner.shared_gpu_users == 3 and hub.spawner_problem == ""


def test_a_service_without_a_config_file_warns_and_uses_the_defaults(tmp_path, monkeypatch, service, caplog):
    monkeypatch.chdir(tmp_path)
    app = service()
    app.initialize([])
    app.log = logging.getLogger("service-test")
    with caplog.at_level(logging.WARNING, logger="service-test"):
        hub = load_service_config(app, app.hub_config)
    assert hub.config_file == "" and [p.slug for p in hub.profiles] == ["default"]
    assert "using the hub's defaults" in caplog.text


def test_a_service_given_a_missing_file_stops(tmp_path, service):
    app = service()
    app.initialize(["-f", str(tmp_path / "nope.py")])
    with pytest.raises(ConfigError, match="no config file"):
        load_service_config(app, app.hub_config)


def test_no_engine_is_a_config_error_naming_where(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    hub = load_hub_config(str(write_config(tmp_path)))
    assert engine_where(hub.spawner) == f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(ConfigError, match=f"no Docker engine answers at unix://{tmp_path}/no-engine.sock"):
        hub.docker()


def test_the_engine_the_config_names_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///from/env.sock")
    hub = load_hub_config(str(write_config(tmp_path, 'c.GPUSpawner.client_kwargs = {"base_url": "tcp://hub:2375"}\n')))
    assert engine_where(hub.spawner) == "tcp://hub:2375"


def test_it_imports_neither_rich_nor_the_command():
    code = "import sys, gpuspawner.config; print(sorted(m for m in ('rich', 'gpuspawner.cli') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
